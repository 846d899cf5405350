//! The campaign checker (being written).
