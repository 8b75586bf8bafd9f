//! haul-install: safe extraction and installers.
