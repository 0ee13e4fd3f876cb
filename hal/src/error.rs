//! One vendor-neutral error type that keeps the vendor's own code and message.

use std::fmt;

/// What went wrong, independent of the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The driver or backend was not initialised (or failed to initialise).
    NotInitialized,
    /// The vendor library could not be found or loaded.
    LibraryNotFound,
    /// No device with that index or UUID.
    InvalidDevice,
    /// The driver is there but reports no device at all (e.g. a Vulkan loader with no driver).
    NoDevice,
    /// An argument is out of range or malformed.
    InvalidValue,
    /// A handle (pointer, module, function, stream, event) is unknown or already released.
    InvalidHandle,
    /// Device memory (or a quota over it) is exhausted.
    OutOfMemory,
    /// The backend or device cannot do this.
    NotSupported,
    /// A named thing (kernel entry, partition template) does not exist.
    NotFound,
    /// A module image (PTX, binary) could not be loaded.
    InvalidImage,
    /// A kernel launch was rejected or failed while running.
    LaunchFailed,
    /// A kernel or copy touched memory outside any allocation.
    IllegalAddress,
    /// Work has been queued but has not finished (a query, not a failure).
    NotReady,
    /// The device fell off the bus, was reset, or its state is corrupt.
    DeviceLost,
    /// A configuration file or variable is invalid.
    Config,
    /// Anything else, with the vendor's words in the message.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotInitialized => "not initialized",
            ErrorKind::LibraryNotFound => "driver library not found",
            ErrorKind::InvalidDevice => "invalid device",
            ErrorKind::NoDevice => "no device",
            ErrorKind::InvalidValue => "invalid value",
            ErrorKind::InvalidHandle => "invalid handle",
            ErrorKind::OutOfMemory => "out of memory",
            ErrorKind::NotSupported => "not supported",
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidImage => "invalid module image",
            ErrorKind::LaunchFailed => "launch failed",
            ErrorKind::IllegalAddress => "illegal address",
            ErrorKind::NotReady => "not ready",
            ErrorKind::DeviceLost => "device lost",
            ErrorKind::Config => "configuration error",
            ErrorKind::Other => "error",
        };
        f.write_str(s)
    }
}

/// The vendor's own error: numeric code and symbolic name (e.g. `2`, `CUDA_ERROR_OUT_OF_MEMORY`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VendorCode {
    pub code: i64,
    pub name: String,
}

/// The HAL's error: a vendor-neutral kind, a message, and the vendor's code where there was one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub vendor: Option<VendorCode>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Other` has no words of its own to add ("error: error: ..." helps nobody).
        if self.kind == ErrorKind::Other {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{}: {}", self.kind, self.message)?;
        }
        if let Some(v) = &self.vendor {
            write!(f, " ({} = {})", v.name, v.code)?;
        }
        Ok(())
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            vendor: None,
        }
    }

    /// Attach the vendor's code and symbolic name.
    pub fn with_vendor(mut self, code: i64, name: impl Into<String>) -> Self {
        self.vendor = Some(VendorCode {
            code,
            name: name.into(),
        });
        self
    }

    pub fn not_supported(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotSupported, what)
    }

    pub fn invalid_value(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidValue, what)
    }

    pub fn invalid_handle(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidHandle, what)
    }

    pub fn out_of_memory(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::OutOfMemory, what)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
