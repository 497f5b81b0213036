//! Programs: what a driver loaded for a client (Level Zero modules, IREE executables,
//! Vulkan pipelines), the client's table of them, and how a launch is checked.

use std::any::Any;
use std::sync::Arc;

use accel_uapi::{EntryInfo, Launch, LaunchArg, ParamKind, ProgramHandle};

use crate::bo::BoTable;
use crate::counters::{Counters, Kind, Tracked};
use crate::driver::{DriverError, JobArg, JobOp, Program};
use crate::handles::Table;
use crate::{bail, Error, Result};

/// A driver's program, counted while anything (a handle, a queued launch) holds it.
#[derive(Debug)]
pub struct Counted {
    inner: Arc<dyn Program>,
    _tracked: Tracked,
}

impl Counted {
    /// Wraps a program the driver loaded.
    pub fn new(counters: &Arc<Counters>, inner: Arc<dyn Program>) -> Arc<Counted> {
        Arc::new(Counted { inner, _tracked: Tracked::new(counters, Kind::Program) })
    }
}

impl Program for Counted {
    fn entries(&self) -> &[EntryInfo] {
        self.inner.entries()
    }

    fn check_launch(&self, entry: u32, grid: [u32; 3], args: &[JobArg]) -> Result<(), DriverError> {
        self.inner.check_launch(entry, grid, args)
    }

    /// The driver's own type (what it loaded), not this wrapper.
    fn as_any(&self) -> &dyn Any {
        self.inner.as_any()
    }
}

slotmap::new_key_type! {
    struct ProgramKey;
}

/// A client's program handles, shared (weakly) with its rings.
pub struct ProgramTable(Table<ProgramKey, Arc<Counted>>);

impl Default for ProgramTable {
    fn default() -> Self {
        ProgramTable(Table::new("program"))
    }
}

impl ProgramTable {
    /// The program behind a handle; `ENOENT` for stale or forged handles.
    pub fn get(&self, h: ProgramHandle) -> Result<Arc<Counted>> {
        self.0.get(h.0)
    }

    /// Adds a handle.
    pub fn insert(&self, p: Arc<Counted>) -> Result<ProgramHandle> {
        Ok(ProgramHandle(self.0.insert(p)?))
    }

    /// Removes a handle.
    pub fn remove(&self, h: ProgramHandle) -> Option<Arc<Counted>> {
        self.0.remove(h.0)
    }

    /// Handles held.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

fn kind_of(a: &LaunchArg) -> Option<ParamKind> {
    match a {
        LaunchArg::None => None,
        LaunchArg::Buffer(_) => Some(ParamKind::Buffer),
        LaunchArg::U32(_) => Some(ParamKind::U32),
        LaunchArg::U64(_) => Some(ParamKind::U64),
        LaunchArg::F32(_) => Some(ParamKind::F32),
    }
}

/// Checks a launch like every other op: the program and entry exist, the arguments match
/// the entry's parameters in number and kind, every buffer view is in bounds (of the
/// caller's own buffers), the grid is not empty, and the driver accepts it
/// ([`Program::check_launch`]).
pub fn resolve_launch(bos: &BoTable, programs: &ProgramTable, l: &Launch) -> Result<JobOp> {
    let program = programs.get(l.program)?;
    let entries = program.entries();
    let Some(entry) = entries.get(l.entry as usize) else {
        bail!(EINVAL, "program {:#x} has {} entry points, not {}", l.program.0, entries.len(), l.entry + 1);
    };
    let given = l.given();
    if given.len() != entry.params.len() {
        bail!(EINVAL, "entry {} takes {} arguments, got {}", entry.name, entry.params.len(), given.len());
    }
    if l.grid.contains(&0) {
        bail!(EINVAL, "launch grid {:?} is empty", l.grid);
    }
    let mut args = Vec::with_capacity(given.len());
    for (i, (a, want)) in given.iter().zip(&entry.params).enumerate() {
        if kind_of(a) != Some(*want) {
            bail!(EINVAL, "argument {i} of {} must be a {want:?}, got {a:?}", entry.name);
        }
        args.push(match a {
            LaunchArg::Buffer(v) => {
                JobArg::Buffer(bos.range(v).map_err(|e| Error::new(e.code, format!("argument {i}: {}", e.message)))?)
            }
            LaunchArg::U32(x) => JobArg::U32(*x),
            LaunchArg::U64(x) => JobArg::U64(*x),
            LaunchArg::F32(x) => JobArg::F32(*x),
            LaunchArg::None => unreachable!("given() stops at the first None"),
        });
    }
    program.check_launch(l.entry, l.grid, &args)?;
    let program: Arc<dyn Program> = program;
    Ok(JobOp::Launch { program, entry: l.entry, grid: l.grid, args })
}
