//! Every scenario against the smol runtime.

haul_tests::all_scenarios!(haul_tests::Smol);
haul_tests::batch_scenarios!(haul_tests::Smol);
