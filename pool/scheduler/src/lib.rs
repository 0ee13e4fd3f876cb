//! Placeholder: the scheduler is being written.
