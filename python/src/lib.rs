//! `accel._accel`: the Python binding of the accel client library (the `accel` crate).
//!
//! Buffers are the daemon's shared memory mapped into this process: the buffer protocol and
//! DLPack hand that memory to NumPy and PyTorch without a copy. Blocking calls release the
//! GIL. Failures raise `accel.Error` (an `OSError`: `.errno` is the Linux errno, `.strerror`
//! the daemon's message).

mod dlpack;
mod ras;
mod ring;
mod sync;

use dlpack::*;
use ras::*;
use ring::*;
use std::ffi::{c_int, c_void, CStr};
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync::*;

use pyo3::create_exception;
use pyo3::exceptions::{PyBufferError, PyOSError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

create_exception!(accel, Error, PyOSError, "An accel call failed: `errno` and `strerror` say why.");

fn raise(e: accel::Error) -> PyErr {
    Error::new_err((e.code.raw() as i32, format!("{}: {}", e.code.name(), e.message)))
}

fn seconds(timeout: Option<f64>) -> PyResult<Duration> {
    match timeout {
        None => Ok(Duration::from_secs(365 * 24 * 3600)),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Duration::from_secs_f64(t)),
        Some(t) => Err(PyValueError::new_err(format!("timeout {t} is not a non-negative number of seconds"))),
    }
}

/// An open device: one connection to the daemon.
#[pyclass(module = "accel", frozen)]
struct Device {
    inner: Arc<accel::Device>,
}

impl Device {
    /// Whether the device is a GPU of the cuda driver (its `vram` goes to DLPack as `kDLCUDA`).
    fn is_cuda(&self) -> bool {
        self.inner.info().driver == "cuda"
    }

    /// Imports descriptor `fd` (the caller's, open during the call) through `import`, for
    /// the two import methods.
    fn import_with(
        &self,
        py: Python<'_>,
        fd: i32,
        import: impl FnOnce(&accel::Device, BorrowedFd<'_>) -> accel::Result<accel::Buffer> + Send,
    ) -> PyResult<Buffer> {
        if fd < 0 {
            return Err(PyValueError::new_err("negative descriptor"));
        }
        // SAFETY: the caller passes an open descriptor it keeps open during the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let b = py.detach(|| import(&self.inner, fd)).map_err(raise)?;
        Ok(Buffer::new(b, self.is_cuda()))
    }
}

#[pymethods]
impl Device {
    /// Opens device `minor` through the daemon at `socket` (default: `$ACCEL_SOCKET`, else the
    /// standard path); `$ACCEL_NS_TOKEN` places the client in a namespace.
    #[new]
    #[pyo3(signature = (minor = 0, socket = None))]
    fn new(py: Python<'_>, minor: u32, socket: Option<PathBuf>) -> PyResult<Self> {
        let socket = socket.unwrap_or_else(accel::default_socket_path);
        let dev = py.detach(|| accel::Device::open_at(&socket, minor)).map_err(raise)?;
        Ok(Device { inner: Arc::new(dev) })
    }

    /// Minor number in this client's namespace.
    #[getter]
    fn minor(&self) -> u32 {
        self.inner.info().minor
    }

    /// Device name.
    #[getter]
    fn name(&self) -> String {
        self.inner.info().name.clone()
    }

    /// Driver name (`cpu`, `testdev`, ...).
    #[getter]
    fn driver(&self) -> String {
        self.inner.info().driver.clone()
    }

    /// Device memory in bytes.
    #[getter]
    fn memory_bytes(&self) -> u64 {
        self.inner.info().memory_bytes
    }

    /// Compute units.
    #[getter]
    fn compute_units(&self) -> u32 {
        self.inner.info().compute_units
    }

    /// Allocates a zeroed buffer of at least `size` bytes in memory region `region` (0: host
    /// memory, mapped into this process; see `regions`); device memory is reached by copies.
    #[pyo3(signature = (size, region = 0))]
    fn alloc(&self, py: Python<'_>, size: u64, region: u32) -> PyResult<Buffer> {
        let b = py.detach(|| self.inner.alloc_in(size, region)).map_err(raise)?;
        Ok(Buffer::new(b, self.is_cuda()))
    }

    /// The device's memory regions: dicts with id, name, kind, size, used, mappable,
    /// exportable, coherent.
    fn regions<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, pyo3::types::PyDict>>> {
        self.inner
            .info()
            .regions
            .iter()
            .map(|r| {
                let d = pyo3::types::PyDict::new(py);
                d.set_item("id", r.id)?;
                d.set_item("name", &r.name)?;
                d.set_item("kind", format!("{:?}", r.kind).to_lowercase())?;
                d.set_item("size", r.size)?;
                d.set_item("used", r.used)?;
                d.set_item("mappable", r.mappable)?;
                d.set_item("exportable", r.exportable)?;
                d.set_item("coherent", r.coherent)?;
                Ok(d)
            })
            .collect()
    }

    /// Loads a program in one of the device's formats (`builtin` on cpu, `testdev-cmdbuf`
    /// on testdev, ...); the driver validates it.
    #[pyo3(signature = (format, data = Vec::new()))]
    fn program(&self, py: Python<'_>, format: &str, data: Vec<u8>) -> PyResult<Program> {
        let p = py.detach(|| self.inner.load_program(format, &data)).map_err(raise)?;
        Ok(Program { inner: p })
    }

    /// Imports a buffer descriptor (an exported buffer or a sealed memfd); `fd` stays yours.
    fn import_fd(&self, py: Python<'_>, fd: i32) -> PyResult<Buffer> {
        self.import_with(py, fd, |dev, fd| dev.import(fd))
    }

    /// Imports device memory another runtime exported (a Vulkan opaque descriptor on a
    /// vulkan device, a CUDA POSIX handle on a cuda device) into device region `region`;
    /// `size` is what the exporter allocated. The buffer is that memory, not a copy; `fd`
    /// stays yours.
    fn import_external(&self, py: Python<'_>, fd: i32, region: u32, size: u64) -> PyResult<Buffer> {
        self.import_with(py, fd, |dev, fd| dev.import_external(fd, region, size))
    }

    /// Creates a queue: `priority` is "low", "normal", "high" or "kernel" (the last two
    /// need an admin), `weight` 1..=10000, `timeout` per job in seconds (default: the
    /// device's).
    #[pyo3(signature = (priority = "normal", weight = 100, timeout = None))]
    fn queue(&self, py: Python<'_>, priority: &str, weight: u32, timeout: Option<f64>) -> PyResult<Queue> {
        let priority = match priority {
            "low" => accel::Priority::Low,
            "normal" => accel::Priority::Normal,
            "high" => accel::Priority::High,
            "kernel" => accel::Priority::Kernel,
            p => return Err(PyValueError::new_err(format!("unknown priority {p:?}"))),
        };
        let timeout = timeout.map(|t| seconds(Some(t))).transpose()?;
        let q = py
            .detach(|| self.inner.create_queue_with(accel::QueueOptions { priority, weight, timeout }))
            .map_err(raise)?;
        Ok(Queue { inner: q })
    }

    /// Creates a syncobj (every syncobj takes binary and timeline operations, as in DRM;
    /// `timeline` documents the intent), signalled at once with `signaled`.
    #[pyo3(signature = (timeline = false, signaled = false))]
    fn syncobj(&self, py: Python<'_>, timeline: bool, signaled: bool) -> PyResult<Syncobj> {
        let s = py
            .detach(
                || if signaled { self.inner.create_syncobj_signaled() } else { self.inner.create_syncobj(timeline) },
            )
            .map_err(raise)?;
        Ok(Syncobj { inner: s })
    }

    /// `DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT` on `(Syncobj, point)` pairs: all of them (`all`) or
    /// any; `for_submit` waits for unsubmitted points to be submitted, `available` counts a
    /// point as done once submitted. Returns the index of the first signalled point; time
    /// running out raises `accel.Error` with errno `ETIME`. Other threads may use the device
    /// meanwhile (the GIL is released).
    #[pyo3(signature = (points, all = true, for_submit = false, available = false, timeout = None))]
    fn syncobj_wait(
        &self,
        py: Python<'_>,
        points: Vec<(Bound<'_, Syncobj>, u64)>,
        all: bool,
        for_submit: bool,
        available: bool,
        timeout: Option<f64>,
    ) -> PyResult<u32> {
        use accel::syncobj::{WAIT_ALL, WAIT_AVAILABLE, WAIT_FOR_SUBMIT, WAIT_RELATIVE};
        let t = i64::try_from(seconds(timeout)?.as_nanos()).unwrap_or(i64::MAX);
        let flags = WAIT_RELATIVE
            | if all { WAIT_ALL } else { 0 }
            | if for_submit { WAIT_FOR_SUBMIT } else { 0 }
            | if available { WAIT_AVAILABLE } else { 0 };
        let objs: Vec<(&accel::Syncobj, u64)> = points.iter().map(|(s, p)| (&s.get().inner, *p)).collect();
        let r = py.detach(|| self.inner.syncobj_wait(&objs, flags, t)).map_err(raise)?;
        Ok(r.first)
    }

    /// `DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL`: signals `(Syncobj, point)` pairs from the host.
    fn syncobj_signal(&self, py: Python<'_>, points: Vec<(Bound<'_, Syncobj>, u64)>) -> PyResult<()> {
        let objs: Vec<(&accel::Syncobj, u64)> = points.iter().map(|(s, p)| (&s.get().inner, *p)).collect();
        py.detach(|| self.inner.syncobj_signal(&objs)).map_err(raise)
    }

    /// `DRM_IOCTL_SYNCOBJ_RESET` of several syncobjs.
    fn syncobj_reset(&self, py: Python<'_>, objs: Vec<Bound<'_, Syncobj>>) -> PyResult<()> {
        let objs: Vec<&accel::Syncobj> = objs.iter().map(|s| &s.get().inner).collect();
        py.detach(|| self.inner.syncobj_reset(&objs)).map_err(raise)
    }

    /// `DRM_IOCTL_SYNCOBJ_QUERY`: highest contiguous signalled points, or the last submitted.
    #[pyo3(signature = (objs, last_submitted = false))]
    fn syncobj_query(&self, py: Python<'_>, objs: Vec<Bound<'_, Syncobj>>, last_submitted: bool) -> PyResult<Vec<u64>> {
        let objs: Vec<&accel::Syncobj> = objs.iter().map(|s| &s.get().inner).collect();
        let flags = if last_submitted { accel::syncobj::QUERY_LAST_SUBMITTED } else { 0 };
        py.detach(|| self.inner.syncobj_query(&objs, flags)).map_err(raise)
    }

    /// Creates a queue with a shared-memory ring of `entries` submissions.
    #[pyo3(signature = (entries = 256))]
    fn ring(&self, py: Python<'_>, entries: u32) -> PyResult<Ring> {
        let r = py.detach(|| self.inner.create_queue().and_then(|q| q.into_ring(entries))).map_err(raise)?;
        Ok(Ring { inner: Mutex::new(r) })
    }

    fn __repr__(&self) -> String {
        let i = self.inner.info();
        format!("<accel.Device accel{} {} ({})>", i.minor, i.name, i.driver)
    }
}

/// A buffer object: device-visible memory mapped into this process.
///
/// `memoryview(buf)`, `numpy.asarray(buf)` (bytes) and `numpy.from_dlpack(buf)` are
/// views of the same pages, not copies. A cuda device's `vram` buffer is a DLPack `kDLCUDA`
/// tensor instead: `torch.from_dlpack(buf)` and `cupy.from_dlpack(buf)` use the GPU memory
/// itself, mapped into this process on first use.
#[pyclass(module = "accel", frozen)]
struct Buffer {
    inner: Arc<accel::Buffer>,
    /// The buffer is a cuda device's.
    cuda: bool,
    /// Its device memory mapped here, once a DLPack consumer asked.
    mapping: std::sync::Mutex<Option<Arc<accel_driver_cuda::direct::DeviceMapping>>>,
}

impl Buffer {
    fn new(b: accel::Buffer, cuda: bool) -> Buffer {
        Buffer { inner: Arc::new(b), cuda, mapping: std::sync::Mutex::new(None) }
    }

    /// For a cuda device's unmapped buffer: its memory mapped into this process (exported by
    /// the daemon, imported with `cuMemImportFromShareableHandle`), made once.
    fn device_mapping(&self, py: Python<'_>) -> PyResult<Option<Arc<accel_driver_cuda::direct::DeviceMapping>>> {
        if self.inner.is_mapped() || !self.cuda {
            return Ok(None);
        }
        let slot = || self.mapping.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = &*slot() {
            return Ok(Some(m.clone()));
        }
        // Made without the lock: the GIL is released meanwhile, and a thread that took the
        // GIL and then waited for the lock would keep this one from taking the GIL back.
        let inner = self.inner.clone();
        let made = py
            .detach(|| {
                let fd = inner.export().map_err(|e| e.to_string())?;
                accel_driver_cuda::direct::DeviceMapping::new(&fd, inner.size()).map_err(|e| e.message)
            })
            .map_err(|why| PyBufferError::new_err(format!("accel buffer {:#x}: {why}", self.inner.handle().0)))?;
        // Two threads may both have made one: the first kept wins, the other is unmapped.
        Ok(Some(slot().get_or_insert_with(|| Arc::new(made)).clone()))
    }

    /// The buffer's pages in this process; `BufferError` for memory of a region clients
    /// cannot map (a device's `vram`), which jobs copy to and from host buffers instead.
    fn mapped(&self) -> PyResult<*mut u8> {
        if self.inner.is_mapped() {
            return Ok(self.inner.as_ptr());
        }
        Err(PyBufferError::new_err(format!(
            "accel buffer {:#x} is in region {}, which is not mapped into this process: copy it to a host buffer (region 0) with a job",
            self.inner.handle().0,
            self.inner.region()
        )))
    }

    fn view(&self, offset: u64, len: Option<u64>) -> PyResult<accel::BufView> {
        let size = self.inner.size();
        let len = len.unwrap_or(size.saturating_sub(offset));
        Ok(accel::BufView { bo: self.inner.handle(), offset, len })
    }
}

#[pymethods]
impl Buffer {
    /// Size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.size()
    }

    /// The daemon's handle of this buffer.
    #[getter]
    fn handle(&self) -> u64 {
        self.inner.handle().0
    }

    /// The memory region it lives in (0: host; see `Device.regions()`).
    #[getter]
    fn region(&self) -> u32 {
        self.inner.region()
    }

    /// Address of the mapping in this process (0 for memory this process cannot map).
    #[getter]
    fn address(&self) -> usize {
        self.inner.as_ptr() as usize
    }

    /// Exports the buffer: a new descriptor (yours to close) another client may import.
    fn export(&self, py: Python<'_>) -> PyResult<i32> {
        let fd = py.detach(|| self.inner.export()).map_err(raise)?;
        Ok(fd.into_raw_fd())
    }

    fn __len__(&self) -> usize {
        self.inner.size() as usize
    }

    /// Writable bytes of the mapping (PEP 3118).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("view is null"));
        }
        let (ptr, len) = {
            let b = slf.get();
            (b.mapped()?, b.inner.size() as isize)
        };
        // SAFETY: `view` is a valid Py_buffer to fill (CPython's contract); the mapping stays
        // alive as long as `obj` (this Buffer) does, which the view holds a reference to.
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = ptr.cast();
            (*view).len = len;
            (*view).readonly = 0;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"B".as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape =
                if flags & ffi::PyBUF_ND == ffi::PyBUF_ND { &mut (*view).len } else { std::ptr::null_mut() };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    /// DLPack export (uint8, 1-D, no copy): host memory as `kDLCPU` (`numpy.from_dlpack(buf)`,
    /// `torch.from_dlpack(buf)` share the pages), a cuda device's `vram` as `kDLCUDA` on its
    /// GPU (`torch.from_dlpack(buf)` is a CUDA tensor over the same memory). The memory is as
    /// the last job that wrote it left it once that job's fence signalled, so no stream
    /// synchronisation is asked of the consumer.
    #[pyo3(signature = (*, stream = None, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<Bound<'py, PyAny>>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = stream;
        let mapping = self.device_mapping(py)?;
        let here = mapping.as_ref().map_or((DL_CPU, 0), |m| (DL_CUDA, m.ordinal()));
        if dl_device.is_some_and(|d| d != here) {
            return Err(PyBufferError::new_err(format!(
                "accel buffer {:#x} lives on DLPack device {here:?}, exported without a copy",
                self.inner.handle().0
            )));
        }
        if copy == Some(true) {
            return Err(PyBufferError::new_err("accel buffers are exported without a copy"));
        }
        let tensor = self.dl_tensor(mapping.as_deref())?;
        // A consumer that speaks DLPack 1.x gets a versioned (and writable) tensor.
        let versioned = match max_version {
            Some(v) => v.extract::<(u32, u32)>().map(|(major, _)| major >= 1).unwrap_or(false),
            None => false,
        };
        if versioned {
            let managed = DLManagedTensorVersioned {
                version: DLPackVersion { major: 1, minor: 0 },
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(dlpack_versioned_deleter),
                flags: 0,
                dl_tensor: tensor,
            };
            return export_capsule(
                py,
                &self.inner,
                mapping,
                managed,
                DLTENSOR_VERSIONED,
                dlpack_versioned_capsule_destructor,
            );
        }
        let managed =
            DLManagedTensor { dl_tensor: tensor, manager_ctx: std::ptr::null_mut(), deleter: Some(dlpack_deleter) };
        export_capsule(py, &self.inner, mapping, managed, DLTENSOR, dlpack_capsule_destructor)
    }

    fn __dlpack_device__(&self, py: Python<'_>) -> PyResult<(i32, i32)> {
        Ok(self.device_mapping(py)?.map_or((DL_CPU, 0), |m| (DL_CUDA, m.ordinal())))
    }

    fn __repr__(&self) -> String {
        format!("<accel.Buffer handle={:#x} size={}>", self.inner.handle().0, self.inner.size())
    }
}

fn buffer_of<'py>(obj: &Bound<'py, PyAny>) -> PyResult<PyRef<'py, Buffer>> {
    obj.cast::<Buffer>().map(|b| b.borrow()).map_err(|_| PyTypeError::new_err("expected an accel.Buffer"))
}

/// What a job waits for: `Fence`s and `(Syncobj, point)` pairs.
fn wait_points(wait: Option<Vec<Bound<'_, PyAny>>>) -> PyResult<Vec<accel::WaitPoint>> {
    wait.unwrap_or_default()
        .iter()
        .map(|w| {
            if let Ok(f) = w.cast::<Fence>() {
                return Ok(f.get().inner.point());
            }
            let (s, point): (Bound<'_, Syncobj>, u64) =
                w.extract().map_err(|_| PyTypeError::new_err("wait entries are Fences or (Syncobj, point)"))?;
            Ok(s.get().inner.point(point))
        })
        .collect()
}

fn signal_points(signal: Option<Vec<(Bound<'_, Syncobj>, u64)>>) -> Vec<accel::SignalPoint> {
    signal.unwrap_or_default().iter().map(|(s, p)| s.get().inner.signal_point(*p)).collect()
}

/// A queue (scheduler entity): jobs run in order.
#[pyclass(module = "accel", frozen)]
struct Queue {
    inner: accel::Queue,
}

fn submit(
    slf: &Bound<'_, Queue>,
    op: accel::Op,
    wait: Option<Vec<Bound<'_, PyAny>>>,
    signal: Option<Vec<(Bound<'_, Syncobj>, u64)>>,
) -> PyResult<Fence> {
    let (wait, signal) = (wait_points(wait)?, signal_points(signal));
    let q = slf.get();
    let f = slf.py().detach(|| q.inner.submit_with(op, &wait, &signal)).map_err(raise)?;
    Ok(Fence { inner: f, _queue: Some(slf.clone().unbind()) })
}

fn mat(b: &Buffer, offset: u64, row_stride: u64) -> accel::MatView {
    accel::MatView { bo: b.inner.handle(), offset, row_stride }
}

#[pymethods]
impl Queue {
    /// A null job.
    #[pyo3(signature = (*, wait = None, signal = None))]
    fn nop(
        slf: &Bound<'_, Self>,
        wait: Option<Vec<Bound<'_, PyAny>>>,
        signal: Option<Vec<(Bound<'_, Syncobj>, u64)>>,
    ) -> PyResult<Fence> {
        submit(slf, accel::Op::Nop, wait, signal)
    }

    /// Fills `length` bytes (default: to the end) at `offset` with the 32-bit `pattern`.
    #[pyo3(signature = (dst, pattern, offset = 0, length = None, *, wait = None, signal = None))]
    #[allow(clippy::too_many_arguments)]
    fn fill(
        slf: &Bound<'_, Self>,
        dst: &Bound<'_, PyAny>,
        pattern: u32,
        offset: u64,
        length: Option<u64>,
        wait: Option<Vec<Bound<'_, PyAny>>>,
        signal: Option<Vec<(Bound<'_, Syncobj>, u64)>>,
    ) -> PyResult<Fence> {
        let dst = buffer_of(dst)?.view(offset, length)?;
        submit(slf, accel::Op::Fill { dst, pattern }, wait, signal)
    }

    /// Copies `length` bytes (default: all of `src` after `src_offset`).
    #[pyo3(signature = (src, dst, length = None, src_offset = 0, dst_offset = 0, *, wait = None, signal = None))]
    #[allow(clippy::too_many_arguments)]
    fn copy(
        slf: &Bound<'_, Self>,
        src: &Bound<'_, PyAny>,
        dst: &Bound<'_, PyAny>,
        length: Option<u64>,
        src_offset: u64,
        dst_offset: u64,
        wait: Option<Vec<Bound<'_, PyAny>>>,
        signal: Option<Vec<(Bound<'_, Syncobj>, u64)>>,
    ) -> PyResult<Fence> {
        let src = buffer_of(src)?.view(src_offset, length)?;
        let dst = buffer_of(dst)?.view(dst_offset, Some(src.len))?;
        submit(slf, accel::Op::Copy { src, dst }, wait, signal)
    }

    /// C = alpha·A·B + beta·C, row-major, A m×k, B k×n, C m×n, each starting at its byte
    /// offset with its row stride in elements (default: packed). `dtype` is the elements'
    /// type: "float32" (default), "float16" or "bfloat16" (the 16-bit ones summed in f32 and
    /// rounded once, as torch.matmul does).
    #[pyo3(signature = (a, b, c, m, n, k, alpha = 1.0, beta = 0.0, a_offset = 0, b_offset = 0, c_offset = 0,
                        lda = None, ldb = None, ldc = None, *, dtype = "float32", wait = None, signal = None))]
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        slf: &Bound<'_, Self>,
        a: &Bound<'_, PyAny>,
        b: &Bound<'_, PyAny>,
        c: &Bound<'_, PyAny>,
        m: u64,
        n: u64,
        k: u64,
        alpha: f32,
        beta: f32,
        a_offset: u64,
        b_offset: u64,
        c_offset: u64,
        lda: Option<u64>,
        ldb: Option<u64>,
        ldc: Option<u64>,
        dtype: &str,
        wait: Option<Vec<Bound<'_, PyAny>>>,
        signal: Option<Vec<(Bound<'_, Syncobj>, u64)>>,
    ) -> PyResult<Fence> {
        let (a, b, c) = (
            mat(&*buffer_of(a)?, a_offset, lda.unwrap_or(k)),
            mat(&*buffer_of(b)?, b_offset, ldb.unwrap_or(n)),
            mat(&*buffer_of(c)?, c_offset, ldc.unwrap_or(n)),
        );
        let ty = match dtype {
            "float32" | "f32" => {
                let g = accel::GemmF32 { m, n, k, a, b, c, alpha, beta };
                return submit(slf, accel::Op::GemmF32(g), wait, signal);
            }
            "float16" | "f16" => accel::Float16::F16,
            "bfloat16" | "bf16" => accel::Float16::Bf16,
            other => return Err(PyValueError::new_err(format!("dtype {other:?}: not float32, float16 or bfloat16"))),
        };
        submit(slf, accel::Op::Gemm16(accel::Gemm16 { m, n, k, a, b, c, alpha, beta, ty }), wait, signal)
    }

    /// Launches entry `entry` of `program` over `grid` with `args`: Buffers (whole) and
    /// scalars as `("u32", v)`, `("u64", v)`, `("f32", v)`, or a bare int (u64) or float (f32).
    #[pyo3(signature = (program, entry, args, grid = (1, 1, 1), *, wait = None, signal = None))]
    fn launch(
        slf: &Bound<'_, Self>,
        program: Bound<'_, Program>,
        entry: &str,
        args: Vec<Bound<'_, PyAny>>,
        grid: (u32, u32, u32),
        wait: Option<Vec<Bound<'_, PyAny>>>,
        signal: Option<Vec<(Bound<'_, Syncobj>, u64)>>,
    ) -> PyResult<Fence> {
        let args = args.iter().map(launch_arg).collect::<PyResult<Vec<_>>>()?;
        let op = program.get().inner.launch(entry, [grid.0, grid.1, grid.2], &args).map_err(raise)?;
        submit(slf, op, wait, signal)
    }

    /// A driver-specific job (`code`, up to four integer arguments).
    #[pyo3(signature = (code, args = (0, 0, 0, 0), *, wait = None, signal = None))]
    fn driver(
        slf: &Bound<'_, Self>,
        code: u32,
        args: (u64, u64, u64, u64),
        wait: Option<Vec<Bound<'_, PyAny>>>,
        signal: Option<Vec<(Bound<'_, Syncobj>, u64)>>,
    ) -> PyResult<Fence> {
        let op = accel::Op::Driver { code, args: [args.0, args.1, args.2, args.3] };
        submit(slf, op, wait, signal)
    }
}

fn launch_arg(a: &Bound<'_, PyAny>) -> PyResult<accel::LaunchArg> {
    if let Ok(b) = a.cast::<Buffer>() {
        return Ok(accel::LaunchArg::Buffer(b.borrow().view(0, None)?));
    }
    if let Ok((kind, v)) = a.extract::<(String, Bound<'_, PyAny>)>() {
        return match kind.as_str() {
            "u32" => Ok(accel::LaunchArg::U32(v.extract()?)),
            "u64" => Ok(accel::LaunchArg::U64(v.extract()?)),
            "f32" => Ok(accel::LaunchArg::F32(v.extract()?)),
            other => Err(PyValueError::new_err(format!("scalar kinds are u32, u64, f32, not {other:?}"))),
        };
    }
    if let Ok(v) = a.extract::<u64>() {
        return Ok(accel::LaunchArg::U64(v));
    }
    if let Ok(v) = a.extract::<f32>() {
        return Ok(accel::LaunchArg::F32(v));
    }
    Err(PyTypeError::new_err("launch arguments are Buffers, ints, floats or (kind, value) pairs"))
}

/// A loaded program: its entry points, launched with `Queue.launch`.
#[pyclass(module = "accel", frozen)]
struct Program {
    inner: accel::Program,
}

#[pymethods]
impl Program {
    /// Entry points as `(name, [parameter kinds])`.
    fn entries(&self) -> Vec<(String, Vec<String>)> {
        self.inner
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.params.iter().map(|p| format!("{p:?}").to_lowercase()).collect()))
            .collect()
    }
}

#[pymodule]
fn _accel(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(ras_events, m)?)?;
    m.add_class::<RasEvent>()?;
    m.add_class::<RasEvents>()?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_class::<Device>()?;
    m.add_class::<Buffer>()?;
    m.add_class::<Queue>()?;
    m.add_class::<Fence>()?;
    m.add_class::<Syncobj>()?;
    m.add_class::<Program>()?;
    m.add_class::<Ring>()?;
    Ok(())
}
