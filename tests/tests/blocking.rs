//! Every scenario against the blocking runtime.

haul_tests::all_scenarios!(haul_tests::Blocking);
haul_tests::batch_scenarios!(haul_tests::Blocking);
