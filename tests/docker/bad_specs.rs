//! Bad specs: applying any of them changes nothing live.
