//! The real ACL runtime, found once: `ascend_sys::Acl` opens `libascendcl.so` (the copy the
//! program already loaded) and looks every function up in that library's own handle, so our
//! exported hooks are never what it finds.

use std::sync::OnceLock;

use ascend_sys::Acl;

/// The real runtime, or `None` when it cannot be loaded (the hooks then answer
/// `ACL_ERROR_UNINITIALIZE`).
pub fn acl() -> Option<&'static Acl> {
    static ACL: OnceLock<Option<Acl>> = OnceLock::new();
    ACL.get_or_init(|| match Acl::load(ascend_sys::ACL_LIBRARY) {
        Ok(a) => Some(a),
        Err(e) => {
            tf_os::init_logging();
            tracing::error!("tensor-fusion ACL interposer: {e}");
            None
        }
    })
    .as_ref()
}

/// Call the real `$name`, or answer `ACL_ERROR_UNINITIALIZE` when the runtime lacks it.
macro_rules! call {
    ($name:ident($($arg:expr),*)) => {
        match $crate::real::acl().and_then(|a| a.$name) {
            // SAFETY: forwarding the caller's own arguments to the real function of the same
            // signature.
            Some(f) => unsafe { f($($arg),*) },
            None => ascend_sys::acl::ACL_ERROR_UNINITIALIZE as ascend_sys::acl::aclError,
        }
    };
}
pub(crate) use call;
