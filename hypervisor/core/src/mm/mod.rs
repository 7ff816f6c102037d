//! Memory virtualization: the frame table and the page-table validator.
