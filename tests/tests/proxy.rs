//! Proxies (tinyproxy on 127.0.0.1: absolute-form http, CONNECT for https, credentials)
//! against every runtime.

mod blocking {
    haul_tests::proxy_scenarios!(haul_tests::Blocking);
}
mod tokio {
    haul_tests::proxy_scenarios!(haul_tests::Tokio);
}
mod smol {
    haul_tests::proxy_scenarios!(haul_tests::Smol);
}
