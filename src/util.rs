//! Small helpers shared by modules.
