//! `VK_EXT_device_fault`: what the device says about a loss — a description, the faulting
//! addresses (with their precision) and vendor fault codes — for the log and the guilty
//! job's error. Devices without the extension (lavapipe) report the loss alone.

use std::ffi::{c_char, CStr};

use ash::vk;

/// The extension's entry point on one logical device.
pub struct FaultQuery {
    ext: ash::ext::device_fault::Device,
}

/// Whether physical device `phys` offers `deviceFault` (the extension listed and the feature
/// on).
pub fn supported(instance: &ash::Instance, phys: vk::PhysicalDevice, listed: bool) -> bool {
    if !listed {
        return false;
    }
    let mut fault = vk::PhysicalDeviceFaultFeaturesEXT::default();
    let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut fault);
    // SAFETY: `phys` came from `instance`; the chain is well formed.
    unsafe { instance.get_physical_device_features2(phys, &mut f2) };
    fault.device_fault == vk::TRUE
}

fn text(raw: &[c_char]) -> String {
    // SAFETY: Vulkan fills these fixed arrays with NUL-terminated strings.
    unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().trim().to_string()
}

impl FaultQuery {
    /// The query on `device` (made with the extension and its feature enabled).
    pub fn new(instance: &ash::Instance, device: &ash::Device) -> FaultQuery {
        FaultQuery { ext: ash::ext::device_fault::Device::new(instance, device) }
    }

    /// What the device reports about its loss, as one line; `None` when it reports nothing.
    pub fn report(&self) -> Option<String> {
        let get = self.ext.fp().get_device_fault_info_ext;
        let device = self.ext.device();
        let mut counts = vk::DeviceFaultCountsEXT::default();
        // SAFETY: the counts query (no info structure); `device` is live.
        let r = unsafe { get(device, &mut counts, std::ptr::null_mut()) };
        if r != vk::Result::SUCCESS {
            return Some(format!("vkGetDeviceFaultInfoEXT: {r:?}"));
        }
        let mut addresses = vec![vk::DeviceFaultAddressInfoEXT::default(); counts.address_info_count as usize];
        let mut vendor = vec![vk::DeviceFaultVendorInfoEXT::default(); counts.vendor_info_count as usize];
        // The vendor's binary crash dump is for the vendor's tools: not asked for.
        counts.vendor_binary_size = 0;
        let mut info = vk::DeviceFaultInfoEXT {
            p_address_infos: addresses.as_mut_ptr(),
            p_vendor_infos: vendor.as_mut_ptr(),
            ..Default::default()
        };
        // SAFETY: the arrays hold the counts the first call gave; both structures are live.
        let r = unsafe { get(device, &mut counts, &mut info) };
        if r != vk::Result::SUCCESS && r != vk::Result::INCOMPLETE {
            return Some(format!("vkGetDeviceFaultInfoEXT: {r:?}"));
        }
        addresses.truncate(counts.address_info_count as usize);
        vendor.truncate(counts.vendor_info_count as usize);
        let vendor: Vec<(String, u64, u64)> =
            vendor.iter().map(|v| (text(&v.description), v.vendor_fault_code, v.vendor_fault_data)).collect();
        let addresses: Vec<(vk::DeviceFaultAddressTypeEXT, u64, u64)> =
            addresses.iter().map(|a| (a.address_type, a.reported_address, a.address_precision)).collect();
        describe(&text(&info.description), &addresses, &vendor)
    }
}

/// One line from a fault's parts: the description, each address as the range the precision
/// allows (`reported` with its low bits unknown), each vendor record with its code and data.
pub fn describe(
    description: &str,
    addresses: &[(vk::DeviceFaultAddressTypeEXT, u64, u64)],
    vendor: &[(String, u64, u64)],
) -> Option<String> {
    let mut parts = Vec::new();
    if !description.is_empty() {
        parts.push(description.to_string());
    }
    for &(kind, reported, precision) in addresses {
        let what = match kind {
            vk::DeviceFaultAddressTypeEXT::READ_INVALID => "invalid read",
            vk::DeviceFaultAddressTypeEXT::WRITE_INVALID => "invalid write",
            vk::DeviceFaultAddressTypeEXT::EXECUTE_INVALID => "invalid execute",
            vk::DeviceFaultAddressTypeEXT::INSTRUCTION_POINTER_UNKNOWN => "instruction pointer (unknown)",
            vk::DeviceFaultAddressTypeEXT::INSTRUCTION_POINTER_INVALID => "instruction pointer (invalid)",
            vk::DeviceFaultAddressTypeEXT::INSTRUCTION_POINTER_FAULT => "instruction pointer (faulting)",
            _ => "address",
        };
        // The precision is a power of two: the true address lies in the aligned block of
        // that size around the reported one.
        let low = reported & !precision.saturating_sub(1);
        parts.push(if precision > 1 {
            format!("{what} at {low:#x}..{:#x}", low.saturating_add(precision))
        } else {
            format!("{what} at {reported:#x}")
        });
    }
    for (text, code, data) in vendor {
        parts.push(format!(
            "{} (vendor code {code:#x}, data {data:#x})",
            if text.is_empty() { "vendor fault" } else { text }
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_reads_as_one_line() {
        assert_eq!(describe("", &[], &[]), None, "nothing reported");
        let line = describe(
            "page fault in compute shader",
            &[
                (vk::DeviceFaultAddressTypeEXT::WRITE_INVALID, 0x7f12_3456, 0x1000),
                (vk::DeviceFaultAddressTypeEXT::INSTRUCTION_POINTER_FAULT, 0xabc0, 1),
            ],
            &[("MMU fault".into(), 31, 0x2a), (String::new(), 1, 0)],
        );
        assert_eq!(
            line.as_deref(),
            Some(
                "page fault in compute shader; invalid write at 0x7f123000..0x7f124000; \
                 instruction pointer (faulting) at 0xabc0; MMU fault (vendor code 0x1f, data 0x2a); \
                 vendor fault (vendor code 0x1, data 0x0)"
            )
        );
    }
}
