//! haul-tests: shared harness for scenario tests.
