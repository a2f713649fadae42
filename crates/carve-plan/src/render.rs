//! Files made from a plan (filled in by the render work).
