//! Mapping `VkResult` to the HAL's [`ErrorKind`], keeping Vulkan's code and name.

use ash::vk;
use tf_hal::{Error, ErrorKind};

/// The HAL kind of a Vulkan result.
pub fn kind(r: vk::Result) -> ErrorKind {
    match r {
        vk::Result::ERROR_OUT_OF_HOST_MEMORY
        | vk::Result::ERROR_OUT_OF_DEVICE_MEMORY
        | vk::Result::ERROR_OUT_OF_POOL_MEMORY
        | vk::Result::ERROR_FRAGMENTED_POOL
        | vk::Result::ERROR_TOO_MANY_OBJECTS => ErrorKind::OutOfMemory,
        vk::Result::ERROR_INITIALIZATION_FAILED => ErrorKind::NotInitialized,
        // The loader found no driver (ICD) that can serve the instance.
        vk::Result::ERROR_INCOMPATIBLE_DRIVER => ErrorKind::NoDevice,
        vk::Result::ERROR_DEVICE_LOST => ErrorKind::DeviceLost,
        vk::Result::ERROR_LAYER_NOT_PRESENT
        | vk::Result::ERROR_EXTENSION_NOT_PRESENT
        | vk::Result::ERROR_FEATURE_NOT_PRESENT
        | vk::Result::ERROR_FORMAT_NOT_SUPPORTED => ErrorKind::NotSupported,
        vk::Result::ERROR_INVALID_SHADER_NV => ErrorKind::InvalidImage,
        vk::Result::NOT_READY | vk::Result::TIMEOUT => ErrorKind::NotReady,
        _ => ErrorKind::Other,
    }
}

/// `VK_ERROR_OUT_OF_DEVICE_MEMORY` and the like.
pub fn name(r: vk::Result) -> String {
    format!("VK_{r:?}")
}

/// A HAL error for a failed Vulkan call, saying what was being done.
pub fn vk_error(what: &str, r: vk::Result) -> Error {
    Error::new(kind(r), format!("{what}: {}", name(r))).with_vendor(r.as_raw() as i64, name(r))
}

/// `map_err` helper: `.map_err(vk_err("vkAllocateMemory"))`.
pub fn vk_err(what: &'static str) -> impl Fn(vk::Result) -> Error {
    move |r| vk_error(what, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_names() {
        let e = vk_error("vkAllocateMemory", vk::Result::ERROR_OUT_OF_DEVICE_MEMORY);
        assert_eq!(e.kind, ErrorKind::OutOfMemory);
        let v = e.vendor.unwrap();
        assert_eq!(
            (v.code, v.name.as_str()),
            (-2, "VK_ERROR_OUT_OF_DEVICE_MEMORY")
        );
        assert_eq!(
            kind(vk::Result::ERROR_INCOMPATIBLE_DRIVER),
            ErrorKind::NoDevice
        );
        assert_eq!(kind(vk::Result::ERROR_DEVICE_LOST), ErrorKind::DeviceLost);
    }
}
