//! The C-boundary kit (`tf-ffi`) bound to Vulkan's codes.

use ash::vk;

/// Vulkan, described by its `VkResult` codes (negative errors, carried by their 32 bits).
pub struct VulkanAbi;

impl tf_ffi::Abi for VulkanAbi {
    const API: &'static str = "Vulkan";
    const SUCCESS: u32 = vk::Result::SUCCESS.as_raw() as u32;
    const INVALID_VALUE: u32 = vk::Result::ERROR_UNKNOWN.as_raw() as u32;
    const INSUFFICIENT_SIZE: u32 = vk::Result::INCOMPLETE.as_raw() as u32;
    const NOT_SUPPORTED: u32 = vk::Result::ERROR_FEATURE_NOT_PRESENT.as_raw() as u32;
    const INTERNAL_ERROR: u32 = vk::Result::ERROR_UNKNOWN.as_raw() as u32;
    const NOT_SUPPORTED_NAME: &'static str = "VK_ERROR_FEATURE_NOT_PRESENT";
    const QUIET: &'static [u32] = &[
        vk::Result::INCOMPLETE.as_raw() as u32,
        vk::Result::NOT_READY.as_raw() as u32,
        vk::Result::TIMEOUT.as_raw() as u32,
        // A refused allocation is the quota working, not a failure of ours.
        vk::Result::ERROR_OUT_OF_DEVICE_MEMORY.as_raw() as u32,
    ];
}

pub const LIBRARY: &str = "the tensor-fusion Vulkan layer";

/// Run an exported function's body under the kit's guard: a panic is logged and becomes
/// `VK_ERROR_UNKNOWN`.
pub fn guarded(function: &'static str, body: impl FnOnce() -> vk::Result) -> vk::Result {
    vk::Result::from_raw(tf_ffi::guard::<VulkanAbi, i32>(LIBRARY, function, || {
        body().as_raw()
    }))
}

/// The same for functions that return nothing, or a pointer (`None` after a panic).
pub fn guarded_other<R: tf_ffi::Answer<VulkanAbi>>(
    function: &'static str,
    body: impl FnOnce() -> R,
) -> R {
    tf_ffi::guard::<VulkanAbi, R>(LIBRARY, function, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_vk_error_unknown() {
        let r = guarded("vkTest", || panic!("boom"));
        assert_eq!(r, vk::Result::ERROR_UNKNOWN);
        assert_eq!(
            guarded("vkTest", || vk::Result::SUCCESS),
            vk::Result::SUCCESS
        );
        let none: Option<u8> = guarded_other("vkTest", || panic!("boom"));
        assert_eq!(none, None);
        guarded_other::<()>("vkTest", || panic!("boom"));
    }
}
