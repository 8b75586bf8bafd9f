//! Connection handling: accepts TCP connections, numbers them, serves each with hyper's
//! HTTP/1.1 server (keep-alive on) around the axum router, and shuts down gracefully within a
//! bound. It does not decide responses (see `respond`).

use std::convert::Infallible;
use std::time::Duration;

use axum::http::Request;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_service::Service;

use crate::respond::ConnectionId;

/// After a failed accept (e.g. too many open files), wait this long before the next one.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Accepts connections until `shutdown` becomes true (or its sender is gone), then gives
/// open connections `grace` to finish their current response and drops the rest.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut connections = JoinSet::new();
    let mut next_connection_id: u64 = 1;
    loop {
        tokio::select! {
            () = stop_requested(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let connection_id = next_connection_id;
                    next_connection_id += 1;
                    tracing::debug!(%peer, connection_id, "haul-origin accepted a connection");
                    connections.spawn(serve_connection(
                        stream,
                        connection_id,
                        router.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "haul-origin failed to accept a connection");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
            Some(_finished) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            remaining = connections.len(),
            "haul-origin drops connections still busy after the shutdown grace period"
        );
    }
    connections.abort_all();
}

async fn serve_connection(
    stream: TcpStream,
    connection_id: u64,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, connection_id, "haul-origin could not set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectionId(connection_id));
        let mut router = router.clone();
        async move {
            let response: Result<Response, Infallible> = router.call(request).await;
            response
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        () = stop_requested(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = outcome {
        // Truncated responses end here on purpose; clients hanging up are normal too.
        tracing::debug!(%error, connection_id, "haul-origin connection ended with an error");
    }
}

/// Resolves once shutdown was requested (or the handle that requests it is gone). Returns
/// nothing so no borrow of the channel is held across later awaits.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: stop as well.
    let _ = shutdown.wait_for(|&stop| stop).await;
}
