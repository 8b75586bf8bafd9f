//! The async clients' own promises (streams, many downloads, cancel on drop) on tokio and smol.

mod tokio {
    haul_tests::async_scenarios!(haul_tests::async_scenarios::TokioHarness);
}
mod smol {
    haul_tests::async_scenarios!(haul_tests::async_scenarios::SmolHarness);
}
