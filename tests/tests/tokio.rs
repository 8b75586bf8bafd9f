//! Every scenario against the tokio runtime.

haul_tests::all_scenarios!(haul_tests::Tokio);
haul_tests::batch_scenarios!(haul_tests::Tokio);
