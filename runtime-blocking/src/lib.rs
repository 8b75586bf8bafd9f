//! haul-blocking
