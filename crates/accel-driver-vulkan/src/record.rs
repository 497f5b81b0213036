//! Recording a job's commands: fills and copies as transfer commands, GEMM through the
//! driver's own shader, launches of client programs, each operand bound through the job's
//! [`Binder`].

use accel_hal::bo::BoMatrix;
use accel_hal::driver::{DriverError, JobArg, JobOp};
use accel_uapi::{Errno, Float16};
use ash::vk;

use crate::gpu::{self, Recorder};
use crate::memory::{Binder, Bound};
use crate::program::VkProgram;
use crate::{einval, Generation, VulkanDevice};

impl VulkanDevice {
    /// Binds a matrix operand of `elem`-byte elements from the nearest offset the device's
    /// alignment allows; the elements before it the shader skips. The binding covers whole
    /// 32-bit words (16-bit operands are read two to a word) where the buffer has them.
    pub(crate) fn bind_matrix(
        &self,
        g: &Generation,
        binder: &mut Binder<'_>,
        m: &BoMatrix,
        elem: u64,
    ) -> Result<(Bound, u32), DriverError> {
        let b = binder.bind(&m.range)?;
        let base = b.offset - b.offset % g.gpu.props.storage_align;
        let skew = b.offset - base;
        if !skew.is_multiple_of(elem) {
            return Err(einval(format!(
                "vulkan: a matrix at byte offset {} is not aligned to its {elem}-byte elements",
                m.range.offset
            )));
        }
        let elems = u32::try_from(skew / elem).map_err(|_| einval("vulkan: offset too large"))?;
        let len = (b.len + skew).next_multiple_of(4).min(b.size - base);
        Ok((Bound { buffer: b.buffer, offset: base, len, size: b.size }, elems))
    }

    /// Records a GEMM of `a`·`b` into `c`: on f32 operands, or 16-bit ones of type `ty`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_gemm(
        &self,
        g: &Generation,
        d: &ash::Device,
        rec: &Recorder,
        binder: &mut Binder<'_>,
        [a, b, c]: [&BoMatrix; 3],
        [alpha, beta]: [f32; 2],
        ty: Option<Float16>,
    ) -> Result<(), DriverError> {
        let dims = [a.rows, b.cols, a.cols, a.row_stride, b.row_stride, c.row_stride];
        let dims: Vec<u32> = dims
            .iter()
            .map(|v| u32::try_from(*v).map_err(|_| einval("vulkan: a GEMM dimension over 2^32")))
            .collect::<Result<_, _>>()?;
        let (program, elem) = if ty.is_some() { (&g.gemm16, 2) } else { (&g.gemm, 4) };
        let (ba, oa) = self.bind_matrix(g, binder, a, elem)?;
        let (bb, ob) = self.bind_matrix(g, binder, b, elem)?;
        let (bc, oc) = self.bind_matrix(g, binder, c, elem)?;
        let mut scalars: Vec<JobArg> = dims.iter().map(|v| JobArg::U32(*v)).collect();
        scalars.extend([
            JobArg::U32(oa),
            JobArg::U32(ob),
            JobArg::U32(oc),
            JobArg::F32(alpha),
            JobArg::F32(beta),
            JobArg::U32(match ty {
                Some(Float16::Bf16) => 1,
                _ => 0,
            }),
        ]);
        let tile = g.gemm_shader.tile();
        let grid = [c.cols.div_ceil(tile) as u32, c.rows.div_ceil(tile) as u32, 1];
        program.record(d, rec, 0, grid, &[ba, bb, bc], &scalars)
    }

    pub(crate) fn record(
        &self,
        g: &Generation,
        d: &ash::Device,
        rec: &Recorder,
        binder: &mut Binder<'_>,
        op: &JobOp,
    ) -> Result<(), DriverError> {
        let before = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::MEMORY_WRITE | vk::AccessFlags::HOST_WRITE)
            .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE);
        let barrier = |src: vk::PipelineStageFlags| {
            // SAFETY: recording into this job's command buffer.
            unsafe {
                d.cmd_pipeline_barrier(
                    rec.cmd,
                    src,
                    vk::PipelineStageFlags::ALL_COMMANDS,
                    vk::DependencyFlags::empty(),
                    &[before],
                    &[],
                    &[],
                )
            }
        };
        let all = vk::PipelineStageFlags::ALL_COMMANDS | vk::PipelineStageFlags::HOST;
        match op {
            JobOp::Fill { dst, pattern } => {
                let b = binder.bind(dst)?;
                if b.offset % 4 != 0 {
                    return Err(einval(format!(
                        "vulkan: fill at byte offset {}: fills start at multiples of 4",
                        dst.offset
                    )));
                }
                barrier(all);
                // SAFETY: recording; the range is inside the buffer (checked by the core).
                unsafe { d.cmd_fill_buffer(rec.cmd, b.buffer, b.offset, b.len, *pattern) };
            }
            JobOp::Copy { src, dst } => {
                let (s, t) = (binder.bind(src)?, binder.bind(dst)?);
                barrier(all);
                let overlap = s.buffer == t.buffer && s.offset < t.offset + t.len && t.offset < s.offset + s.len;
                if overlap {
                    // Vulkan copies must not overlap: go through a scratch buffer.
                    let (tmp, mem) = g.gpu.buffer(s.len, g.gpu.device_type, false)?;
                    binder.owned.push(gpu::Owned::Buffer(tmp, Some(mem)));
                    let there = vk::BufferCopy { src_offset: s.offset, dst_offset: 0, size: s.len };
                    let back = vk::BufferCopy { src_offset: 0, dst_offset: t.offset, size: s.len };
                    // SAFETY: recording; ranges checked by the core.
                    unsafe { d.cmd_copy_buffer(rec.cmd, s.buffer, tmp, &[there]) };
                    barrier(vk::PipelineStageFlags::ALL_COMMANDS);
                    // SAFETY: as above.
                    unsafe { d.cmd_copy_buffer(rec.cmd, tmp, t.buffer, &[back]) };
                } else {
                    let region = vk::BufferCopy { src_offset: s.offset, dst_offset: t.offset, size: s.len };
                    // SAFETY: recording; ranges checked by the core.
                    unsafe { d.cmd_copy_buffer(rec.cmd, s.buffer, t.buffer, &[region]) };
                }
            }
            JobOp::GemmF32 { a, b, c, alpha, beta } => {
                self.record_gemm(g, d, rec, binder, [a, b, c], [*alpha, *beta], None)?;
            }
            JobOp::Gemm16 { a, b, c, alpha, beta, ty } => {
                self.record_gemm(g, d, rec, binder, [a, b, c], [*alpha, *beta], Some(*ty))?;
            }
            JobOp::Launch { program, entry, grid, args } => {
                let p = program
                    .as_any()
                    .downcast_ref::<VkProgram>()
                    .ok_or_else(|| einval("vulkan: a program of another driver"))?;
                if !p.is_on(&g.gpu) {
                    return Err(DriverError::new(
                        Errno::ENODEV,
                        "vulkan: the program was lost with the device it was loaded on (a device reset): load it again",
                    ));
                }
                let mut buffers = Vec::new();
                let mut scalars = Vec::new();
                for a in args {
                    match a {
                        JobArg::Buffer(r) => buffers.push(binder.bind(r)?),
                        s => scalars.push(s.clone()),
                    }
                }
                p.record(d, rec, *entry, *grid, &buffers, &scalars)?;
            }
            JobOp::Nop => {}
            JobOp::Driver { code, .. } => {
                return Err(DriverError::new(Errno::EOPNOTSUPP, format!("vulkan: no driver op {code}")))
            }
        }
        Ok(())
    }
}
