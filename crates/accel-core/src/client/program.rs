//! A client's programs: load (the driver validates), describe, unload.

use accel_uapi::{EntryInfo, Errno, ProgramHandle};

use super::Client;
use crate::program::Counted;
use crate::{bail, Error, Result};

/// Largest program accepted (the request must fit one message).
pub const MAX_PROGRAM_BYTES: usize = 60 * 1024;

impl Client {
    /// Loads a program in one of the device's formats; the driver validates it (`EINVAL`
    /// with its reason); an unknown format is `EOPNOTSUPP`.
    pub fn program_load(&mut self, format: &str, bytes: &[u8]) -> Result<(ProgramHandle, Vec<EntryInfo>)> {
        self.check_live()?;
        let dev = self.device()?.clone();
        if !dev.program_formats.iter().any(|f| f == format) {
            bail!(
                EOPNOTSUPP,
                "accel{} ({}) loads programs of formats {:?}, not {format:?}",
                dev.minor,
                dev.info.driver,
                dev.program_formats
            );
        }
        if bytes.len() > MAX_PROGRAM_BYTES {
            bail!(E2BIG, "program of {} bytes exceeds {MAX_PROGRAM_BYTES}", bytes.len());
        }
        let program = Counted::new(&self.sub.counters, dev.driver.load_program(format, bytes)?);
        let entries = crate::driver::Program::entries(&*program).to_vec();
        let h = self.with_object(|c| c.programs.insert(program))?;
        Ok((h, entries))
    }

    /// A loaded program's entry points.
    pub fn program_info(&self, h: ProgramHandle) -> Result<Vec<EntryInfo>> {
        Ok(crate::driver::Program::entries(&*self.programs.get(h)?).to_vec())
    }

    /// Drops a program handle; launches already queued keep the program.
    pub fn program_unload(&mut self, h: ProgramHandle) -> Result<()> {
        self.programs
            .remove(h)
            .map(drop)
            .ok_or_else(|| Error::new(Errno::ENOENT, format!("no program with handle {:#x}", h.0)))?;
        self.released_object();
        Ok(())
    }
}
