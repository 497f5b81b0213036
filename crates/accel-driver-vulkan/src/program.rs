//! `spirv` programs: SPIR-V modules validated and reflected with naga (entry points, storage
//! buffers, push constants), one compute pipeline per entry point. A launch binds buffer
//! arguments to the module's storage buffers in binding order and packs scalar arguments into
//! its push-constant block in member order.

use std::any::Any;
use std::ffi::CString;
use std::sync::Arc;

use accel_hal::driver::{DriverError, JobArg, Program};
use accel_uapi::{EntryInfo, Errno, ParamKind};
use ash::vk;

use crate::gpu::{vk_err, Gpu, Recorder};
use crate::memory::Bound;

/// The format name of SPIR-V programs.
pub const FORMAT: &str = "spirv";

/// A loaded SPIR-V module.
pub struct VkProgram {
    gpu: Arc<Gpu>,
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipelines: Vec<vk::Pipeline>,
    entries: Vec<EntryInfo>,
    /// Binding number of each buffer parameter, in parameter order.
    bindings: Vec<u32>,
    /// Offset and kind of each scalar parameter in the push-constant block.
    push: Vec<(u32, ParamKind)>,
    push_size: u32,
}

impl std::fmt::Debug for VkProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VkProgram").field("entries", &self.entries).finish()
    }
}

fn invalid(message: impl Into<String>) -> DriverError {
    DriverError::new(Errno::EINVAL, message)
}

/// What a module asks for: buffer bindings, push-constant members, its size, entry names.
type Reflected = (Vec<u32>, Vec<(u32, ParamKind)>, u32, Vec<String>);

/// What a load checks of a client's bytes before Vulkan sees them: naga parses and validates
/// the module, then its interface is read (storage buffers in set 0, a push-constant block of
/// 32-bit scalars or u64s, at least one compute entry point). The names of its compute entry
/// points, or the `EINVAL` a load gives. Needs no device; the fuzz target `load_spirv` runs it.
pub fn check(bytes: &[u8]) -> Result<Vec<String>, DriverError> {
    reflect(bytes).map(|(_, _, _, names)| names)
}

fn reflect(bytes: &[u8]) -> Result<Reflected, DriverError> {
    if !bytes.len().is_multiple_of(4) || bytes.len() < 20 {
        return Err(invalid(format!("spirv: {} bytes is not a SPIR-V module", bytes.len())));
    }
    // naga's parser panics on some malformed modules (an `OpTypeStruct` of a float of width 0
    // does, in naga 25): that is an invalid module too, not a daemon thread's end.
    let module = accel_hal::catch_panic(|| {
        let options = naga::front::spv::Options { adjust_coordinate_space: false, ..Default::default() };
        let module = naga::front::spv::parse_u8_slice(bytes, &options).map_err(|e| invalid(format!("spirv: {e}")))?;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .map_err(|e| invalid(format!("spirv: invalid module: {}", e.into_inner())))?;
        Ok::<_, DriverError>(module)
    })
    .map_err(|why| invalid(format!("spirv: the parser failed on this module ({why})")))??;
    let mut buffers = Vec::new();
    let mut push = Vec::new();
    let mut push_size = 0;
    for (_, var) in module.global_variables.iter() {
        match var.space {
            naga::AddressSpace::Storage { .. } => {
                let b = var.binding.as_ref().ok_or_else(|| invalid("spirv: a storage buffer without a binding"))?;
                if b.group != 0 {
                    return Err(invalid(format!("spirv: buffers must be in descriptor set 0, not {}", b.group)));
                }
                buffers.push(b.binding);
            }
            naga::AddressSpace::PushConstant => {
                let mut ty = &module.types[var.ty];
                // A block wrapping one struct (as some compilers emit) is that struct.
                if let naga::TypeInner::Struct { members, .. } = &ty.inner {
                    if let [only] = members.as_slice() {
                        if matches!(module.types[only.ty].inner, naga::TypeInner::Struct { .. }) && only.offset == 0 {
                            ty = &module.types[only.ty];
                        }
                    }
                }
                let naga::TypeInner::Struct { members, span } = &ty.inner else {
                    return Err(invalid("spirv: the push-constant block must be a struct"));
                };
                push_size = *span;
                for m in members {
                    let kind = match module.types[m.ty].inner {
                        naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Uint, width: 4 })
                        | naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Sint, width: 4 }) => {
                            ParamKind::U32
                        }
                        naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Float, width: 4 }) => {
                            ParamKind::F32
                        }
                        naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Uint, width: 8 }) => {
                            ParamKind::U64
                        }
                        ref other => {
                            return Err(invalid(format!(
                                "spirv: push-constant member {:?} is {other:?}; scalars of 32 bits or u64 only",
                                m.name.as_deref().unwrap_or("?")
                            )))
                        }
                    };
                    push.push((m.offset, kind));
                }
            }
            naga::AddressSpace::Uniform | naga::AddressSpace::Handle => {
                return Err(invalid(
                    "spirv: uniform buffers, images and samplers are not supported; use storage buffers",
                ))
            }
            _ => {}
        }
    }
    buffers.sort_unstable();
    let names: Vec<String> =
        module.entry_points.iter().filter(|e| e.stage == naga::ShaderStage::Compute).map(|e| e.name.clone()).collect();
    if names.is_empty() {
        return Err(invalid("spirv: the module has no compute entry point"));
    }
    Ok((buffers, push, push_size, names))
}

impl VkProgram {
    /// Validates, reflects and builds `bytes` (SPIR-V) on `gpu`; at most `max_args`
    /// parameters (a client's launch carries [`accel_uapi::MAX_LAUNCH_ARGS`]).
    pub fn load(gpu: &Arc<Gpu>, bytes: &[u8], max_args: usize) -> Result<VkProgram, DriverError> {
        let (bindings, push, push_size, names) = reflect(bytes)?;
        if push_size > gpu.props.max_push {
            return Err(invalid(format!(
                "spirv: {push_size} bytes of push constants; the device takes {}",
                gpu.props.max_push
            )));
        }
        if bindings.len() + push.len() > max_args {
            return Err(invalid(format!(
                "spirv: {} parameters; a launch carries at most {max_args}",
                bindings.len() + push.len()
            )));
        }
        let d = &gpu.device;
        let words: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let mut p = VkProgram {
            gpu: gpu.clone(),
            module: vk::ShaderModule::null(),
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
            pipelines: Vec::new(),
            entries: Vec::new(),
            bindings,
            push,
            push_size,
        };
        let info = vk::ShaderModuleCreateInfo::default().code(&words);
        // SAFETY: valid create info (validated SPIR-V words). On any error below, Drop
        // destroys what was made so far (null handles are ignored by Vulkan).
        p.module = unsafe { d.create_shader_module(&info, None) }.map_err(vk_err("vkCreateShaderModule"))?;
        let set_bindings: Vec<_> = p
            .bindings
            .iter()
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(*b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&set_bindings);
        // SAFETY: valid create info.
        p.set_layout =
            unsafe { d.create_descriptor_set_layout(&info, None) }.map_err(vk_err("vkCreateDescriptorSetLayout"))?;
        let ranges =
            [vk::PushConstantRange { stage_flags: vk::ShaderStageFlags::COMPUTE, offset: 0, size: p.push_size }];
        let layouts = [p.set_layout];
        let mut info = vk::PipelineLayoutCreateInfo::default().set_layouts(&layouts);
        if p.push_size > 0 {
            info = info.push_constant_ranges(&ranges);
        }
        // SAFETY: valid create info.
        p.layout = unsafe { d.create_pipeline_layout(&info, None) }.map_err(vk_err("vkCreatePipelineLayout"))?;
        let mut params = vec![ParamKind::Buffer; p.bindings.len()];
        params.extend(p.push.iter().map(|(_, k)| *k));
        for name in names {
            let cname = CString::new(name.clone()).map_err(|_| invalid("spirv: an entry name with a NUL"))?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(p.module)
                .name(&cname);
            let info = [vk::ComputePipelineCreateInfo::default().stage(stage).layout(p.layout)];
            // SAFETY: valid create info; the module and layout are live.
            let pipeline = unsafe { d.create_compute_pipelines(vk::PipelineCache::null(), &info, None) }
                .map_err(|(_, r)| invalid(format!("spirv: the driver refused entry {name:?}: {r:?}")))?[0];
            p.pipelines.push(pipeline);
            p.entries.push(EntryInfo { name, params: params.clone() });
        }
        Ok(p)
    }

    /// Whether the program lives on logical device `gpu` (not on one lost before it).
    pub fn is_on(&self, gpu: &Arc<Gpu>) -> bool {
        Arc::ptr_eq(&self.gpu, gpu)
    }

    /// Records a launch of `entry` over `grid` work groups: `buffers` bound to the module's
    /// storage buffers in binding order, `scalars` packed into its push constants.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        d: &ash::Device,
        rec: &Recorder,
        entry: u32,
        grid: [u32; 3],
        buffers: &[Bound],
        scalars: &[JobArg],
    ) -> Result<(), DriverError> {
        if buffers.len() != self.bindings.len() || scalars.len() != self.push.len() {
            return Err(invalid("spirv: the arguments do not match the entry's parameters"));
        }
        for (i, b) in buffers.iter().enumerate() {
            check_range(&self.gpu, &format!("buffer binding {i}"), b.len)?;
        }
        let set = rec.descriptor_set(d, self.set_layout)?;
        let infos: Vec<_> = buffers
            .iter()
            .map(|b| [vk::DescriptorBufferInfo { buffer: b.buffer, offset: b.offset, range: b.len.max(4) }])
            .collect();
        let mut push = vec![0u8; self.push_size as usize];
        for ((offset, _), scalar) in self.push.iter().zip(scalars) {
            let bytes = match scalar {
                JobArg::U32(v) => v.to_le_bytes().to_vec(),
                JobArg::F32(v) => v.to_le_bytes().to_vec(),
                JobArg::U64(v) => v.to_le_bytes().to_vec(),
                JobArg::Buffer(_) => return Err(invalid("spirv: a buffer where a scalar goes")),
            };
            let at = *offset as usize;
            push.get_mut(at..at + bytes.len())
                .ok_or_else(|| invalid("spirv: a push constant outside the block"))?
                .copy_from_slice(&bytes);
        }
        let writes: Vec<_> = self
            .bindings
            .iter()
            .zip(&infos)
            .map(|(b, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(*b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        let before = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::MEMORY_WRITE | vk::AccessFlags::HOST_WRITE)
            .dst_access_mask(vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE);
        let pipeline =
            *self.pipelines.get(entry as usize).ok_or_else(|| invalid(format!("spirv: no entry {entry}")))?;
        // SAFETY: recording into this job's command buffer; every handle is live for the job.
        unsafe {
            d.update_descriptor_sets(&writes, &[]);
            d.cmd_pipeline_barrier(
                rec.cmd,
                vk::PipelineStageFlags::ALL_COMMANDS | vk::PipelineStageFlags::HOST,
                vk::PipelineStageFlags::ALL_COMMANDS,
                vk::DependencyFlags::empty(),
                &[before],
                &[],
                &[],
            );
            d.cmd_bind_pipeline(rec.cmd, vk::PipelineBindPoint::COMPUTE, pipeline);
            d.cmd_bind_descriptor_sets(rec.cmd, vk::PipelineBindPoint::COMPUTE, self.layout, 0, &[set], &[]);
            if !push.is_empty() {
                d.cmd_push_constants(rec.cmd, self.layout, vk::ShaderStageFlags::COMPUTE, 0, &push);
            }
            d.cmd_dispatch(rec.cmd, grid[0], grid[1], grid[2]);
        }
        Ok(())
    }
}

/// `E2BIG` where `len` bytes exceed what one storage-buffer binding of the device covers
/// (`maxStorageBufferRange`: 128 MiB on some devices): a larger binding is undefined
/// behaviour in the driver, not an error it reports.
fn check_range(gpu: &Gpu, what: &str, len: u64) -> Result<(), DriverError> {
    let max = gpu.props.max_storage_range;
    if len > max {
        return Err(DriverError::new(
            Errno::E2BIG,
            format!("vulkan: {what} spans {len} bytes; this device binds at most {max} bytes as one storage buffer"),
        ));
    }
    Ok(())
}

impl Program for VkProgram {
    fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }

    fn check_launch(&self, _entry: u32, grid: [u32; 3], args: &[JobArg]) -> Result<(), DriverError> {
        let max = self.gpu.props.max_groups;
        if grid.iter().zip(max).any(|(g, m)| *g > m) {
            return Err(invalid(format!("vulkan: grid {grid:?} exceeds the device's work-group counts {max:?}")));
        }
        let align = self.gpu.props.storage_align as usize;
        for (i, a) in args.iter().enumerate() {
            if let JobArg::Buffer(r) = a {
                if r.offset % align != 0 {
                    return Err(invalid(format!(
                        "vulkan: argument {i} starts at offset {}; storage buffers bind at multiples of {align}",
                        r.offset
                    )));
                }
                check_range(&self.gpu, &format!("argument {i}"), r.len as u64)?;
            }
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for VkProgram {
    fn drop(&mut self) {
        if self.gpu.is_lost() {
            return; // a job that never ends may still use it (see `Gpu::free`)
        }
        let d = &self.gpu.device;
        // SAFETY: launches hold their program until they completed; null handles are ignored.
        unsafe {
            for p in self.pipelines.drain(..) {
                d.destroy_pipeline(p, None);
            }
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
            d.destroy_shader_module(self.module, None);
        }
    }
}
