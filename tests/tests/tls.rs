//! HTTPS (rustls, a local CA, a real TLS server on 127.0.0.1) against every runtime.

mod blocking {
    haul_tests::tls_scenarios!(haul_tests::Blocking);
}
mod tokio {
    haul_tests::tls_scenarios!(haul_tests::Tokio);
}
mod smol {
    haul_tests::tls_scenarios!(haul_tests::Smol);
}
