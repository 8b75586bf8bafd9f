//! Every scenario against the blocking runtime.

haul_tests::all_scenarios!(haul_tests::Blocking);
