//! One transfer's event queue, from the driver to the [`crate::Transfer`].
//!
//! Owns: holding a job's events until its transfer takes them, with progress coalesced: a
//! [`Event::Progress`] that arrives while the previous untaken event is also a progress
//! replaces it (a progress event says where the job is now, so only the newest counts).
//! A transfer that is only awaited, or read slowly, therefore holds a few events per job
//! whatever the file's size, not one per chunk received. Every other event is kept in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use haul_core::Event;

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    /// The sender is gone: no more events.
    closed: bool,
    waker: Option<Waker>,
}

fn lock(q: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

/// The driver's end.
pub(crate) struct EventSender(Arc<Mutex<Queue>>);

/// The transfer's end.
pub(crate) struct EventReceiver(Arc<Mutex<Queue>>);

/// A connected pair.
pub(crate) fn channel() -> (EventSender, EventReceiver) {
    let q = Arc::new(Mutex::new(Queue::default()));
    (EventSender(q.clone()), EventReceiver(q))
}

impl EventSender {
    /// Queue `ev` (replacing an untaken progress event with a newer one) and wake the
    /// receiver.
    pub(crate) fn send(&self, ev: Event) {
        if Arc::strong_count(&self.0) == 1 {
            // The transfer was dropped (which cancelled its job): nobody will read this.
            return;
        }
        let waker = {
            let mut q = lock(&self.0);
            match (q.events.back_mut(), &ev) {
                (Some(last @ Event::Progress { .. }), Event::Progress { .. }) => *last = ev,
                _ => q.events.push_back(ev),
            }
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut q = lock(&self.0);
            q.closed = true;
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl EventReceiver {
    /// The next event; `None` once the sender is gone and every event was taken.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut q = lock(&self.0);
        if let Some(ev) = q.events.pop_front() {
            return Poll::Ready(Some(ev));
        }
        if q.closed {
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Events waiting.
    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.0).events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_core::JobId;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn progress(bytes: u64) -> Event {
        Event::Progress {
            job: JobId(1),
            bytes,
            total: Some(1000),
            rate: 0,
            eta: None,
        }
    }

    #[test]
    fn untaken_progress_is_replaced_by_the_newest_and_other_events_keep_their_order() {
        let (tx, rx) = channel();
        let started = Event::Started {
            job: JobId(1),
            url: "http://h/f".into(),
        };
        tx.send(started.clone());
        for bytes in 1..=500 {
            tx.send(progress(bytes));
        }
        assert_eq!(rx.queued(), 2, "one progress event however many arrived");
        let resumed = Event::Resuming {
            job: JobId(1),
            offset: 500,
        };
        tx.send(resumed.clone());
        tx.send(progress(600));
        tx.send(progress(700));
        drop(tx);
        let waker = Waker::from(Arc::new(Count(Default::default())));
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        while let Poll::Ready(Some(ev)) = rx.poll_next(&mut cx) {
            got.push(ev);
        }
        assert_eq!(got, vec![started, progress(500), resumed, progress(700)]);
        assert_eq!(rx.poll_next(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_an_event_and_by_the_end() {
        let (tx, rx) = channel();
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rx.poll_next(&mut cx), Poll::Pending);
        tx.send(progress(1));
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(rx.poll_next(&mut cx), Poll::Ready(Some(progress(1))));
        assert_eq!(rx.poll_next(&mut cx), Poll::Pending);
        drop(tx);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(rx.poll_next(&mut cx), Poll::Ready(None));
    }
}
