//! The codec's refusals: an executor runs only scans a front end of its cluster signed,
//! before they expire, rebuilt as they were planned.
