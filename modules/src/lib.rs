//! haul-modules: signed manifests and a content-addressed store.
