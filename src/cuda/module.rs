//! The embedded PTX and the per-device module store: each PTX module is loaded into a device's
//! context at most once per process, on first use, and its functions are looked up by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::driver_error;
use crate::error::{Error, Result};

/// A PTX module built from one `kernels/*.cu` file by `kernels/build_ptx.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Module {
    /// `kernels/step.cu`: the fused element-wise step kernels.
    Step,
    /// `kernels/persistent.cu`: the persistent whole-sequence kernels.
    Persistent,
    /// `kernels/gemm.cu`: matrix products, bias sums, row permutations.
    Gemm,
}

impl Module {
    /// Every module.
    #[cfg(test)]
    pub(crate) const ALL: [Module; 3] = [Module::Step, Module::Persistent, Module::Gemm];

    /// The module's PTX text.
    pub(crate) fn ptx(self) -> &'static str {
        match self {
            Module::Step => include_str!("../../kernels/ptx/step.ptx"),
            Module::Persistent => include_str!("../../kernels/ptx/persistent.ptx"),
            Module::Gemm => include_str!("../../kernels/ptx/gemm.ptx"),
        }
    }

    /// The kernel entries of the module without their type suffix (`_f32` / `_f64`).
    pub(crate) fn entries(self) -> &'static [&'static str] {
        match self {
            Module::Step => &[
                "rnn_fwd_step",
                "lstm_fwd_step",
                "gru_fwd_gates",
                "gru_fwd_step",
                "rnn_bwd_step",
                "lstm_bwd_step",
                "gru_bwd_step",
                "gru_bwd_gates",
            ],
            Module::Persistent => &[
                "rnn_fwd_persistent",
                "lstm_fwd_persistent",
                "gru_fwd_persistent",
                "rnn_bwd_persistent",
                "lstm_bwd_persistent",
                "gru_bwd_persistent",
            ],
            Module::Gemm => &["gemm", "sum_rows", "permute_rows", "gather_blocks"],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One device as the library uses it: its primary context, the properties the launch plans
/// need, and its loaded modules.
#[derive(Debug)]
pub(crate) struct DeviceState {
    pub(crate) ctx: Arc<CudaContext>,
    /// Streaming multiprocessors.
    pub(crate) sm_count: u32,
    /// Largest dynamic shared memory a block may opt into, in bytes.
    pub(crate) max_smem_optin: u32,
    /// Whether the device can launch cooperative kernels (needed by the persistent path).
    pub(crate) cooperative: bool,
    modules: [Mutex<Option<Arc<CudaModule>>>; 3],
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl DeviceState {
    /// The device's state, created once per process and ordinal.
    pub(crate) fn get(ordinal: usize) -> Result<Arc<DeviceState>> {
        static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<DeviceState>>>> = OnceLock::new();
        let devices = DEVICES.get_or_init(Default::default);
        let mut map = devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(&ordinal) {
            return Ok(d.clone());
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_error("creating the context"))?;
        let attr = |a| {
            ctx.attribute(a)
                .map_err(driver_error("reading a device attribute"))
        };
        let sm_count = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let max_smem_optin =
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let cooperative = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)? != 0;
        let state = Arc::new(DeviceState {
            ctx,
            sm_count: sm_count.max(0) as u32,
            max_smem_optin: max_smem_optin.max(0) as u32,
            cooperative,
            modules: Default::default(),
            functions: Mutex::new(HashMap::new()),
        });
        map.insert(ordinal, state.clone());
        Ok(state)
    }

    /// The module, loaded into this device's context on first use.
    fn module(&self, module: Module) -> Result<Arc<CudaModule>> {
        let mut slot = self.modules[module.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let loaded = self
            .ctx
            .load_module(Ptx::from_src(module.ptx()))
            .map_err(driver_error("loading the embedded PTX"))?;
        *slot = Some(loaded.clone());
        Ok(loaded)
    }

    /// Kernel `name` (with its type suffix) of `module`.
    pub(crate) fn function(&self, module: Module, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(f.clone());
        }
        if !module.entries().iter().any(|e| {
            name.strip_prefix(e)
                .is_some_and(|s| s == "_f32" || s == "_f64")
        }) {
            return Err(Error::Device {
                reason: format!("no kernel `{name}` in the embedded PTX"),
            });
        }
        let f = self
            .module(module)?
            .load_function(name)
            .map_err(driver_error("looking up a kernel"))?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), f.clone());
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter declarations of entry `name` in `ptx`, e.g. `[".u32", ".u64"]` or
    /// `[".align 8 .b8 [152]"]`.
    fn entry_params(ptx: &str, name: &str) -> Option<Vec<String>> {
        let head = format!(".visible .entry {name}(");
        let start = ptx.find(&head)? + head.len();
        let end = start + ptx[start..].find(')')?;
        Some(
            ptx[start..end]
                .split(',')
                .map(|p| {
                    let p = p.trim().trim_start_matches(".param").trim();
                    // `.u32 name_param_0` -> `.u32`; `.align 8 .b8 name_param_0[152]` -> with size.
                    let mut words: Vec<&str> = p.split_whitespace().collect();
                    let last = words.pop().unwrap_or("");
                    let size = last.find('[').map(|i| &last[i..]).unwrap_or("");
                    format!(
                        "{}{}{}",
                        words.join(" "),
                        if size.is_empty() { "" } else { " " },
                        size
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn every_entry_is_in_its_ptx_for_both_types() {
        for module in Module::ALL {
            for base in module.entries() {
                for suffix in ["_f32", "_f64"] {
                    let name = format!("{base}{suffix}");
                    assert!(
                        entry_params(module.ptx(), &name).is_some(),
                        "{name} missing from {module:?}"
                    );
                }
            }
            // And nothing else: every `.entry` of the PTX is listed.
            let count = module.ptx().matches(".visible .entry ").count();
            assert_eq!(count, 2 * module.entries().len(), "{module:?}");
        }
    }

    #[test]
    fn ptx_targets_an_isa_current_drivers_load() {
        for module in Module::ALL {
            let ptx = module.ptx();
            // PTX ISA 8.4 (CUDA 12.4): drivers from release 550 on. Newer ISA would lock out
            // older drivers; raise only together with the documented driver requirement.
            assert!(ptx.contains("\n.version 8.4\n"), "{module:?}");
            assert!(ptx.contains("\n.target sm_80\n"), "{module:?}");
            assert!(ptx.contains("\n.address_size 64\n"), "{module:?}");
        }
    }

    #[test]
    fn kernel_signatures_match_the_launch_wrappers() {
        let rnn = vec![format!(
            ".align 8 .b8 [{}]",
            std::mem::size_of::<super::super::params::RnnParams>()
        )];
        let gemm = vec![format!(
            ".align 8 .b8 [{}]",
            std::mem::size_of::<super::super::params::GemmParams>()
        )];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for suffix in ["_f32", "_f64"] {
            for module in [Module::Step, Module::Persistent] {
                for base in module.entries() {
                    let name = format!("{base}{suffix}");
                    assert_eq!(entry_params(module.ptx(), &name).unwrap(), rnn, "{name}");
                }
            }
            let g = Module::Gemm.ptx();
            let p = |n: &str| entry_params(g, &format!("{n}{suffix}")).unwrap();
            assert_eq!(p("gemm"), gemm);
            // (rows: i32, cols: i32, ld: i32, src: u64, dst: u64)
            assert_eq!(p("sum_rows"), s(&[".u32", ".u32", ".u32", ".u64", ".u64"]));
            // (time_steps, batch, width, batch_major, go_backwards, to_caller: i32, src, dst: u64)
            assert_eq!(
                p("permute_rows"),
                s(&[
                    ".u32", ".u32", ".u32", ".u32", ".u32", ".u32", ".u64", ".u64"
                ])
            );
            // (count: i32, len: i64, stride: i64, src: u64, dst: u64)
            assert_eq!(
                p("gather_blocks"),
                s(&[".u32", ".u64", ".u64", ".u64", ".u64"])
            );
        }
    }

    #[test]
    fn persistent_kernels_use_only_dynamic_shared_memory() {
        // The launch plan sizes the dynamic shared memory from the formulas alone; static
        // shared arrays in these kernels would silently shrink what is left.
        let ptx = Module::Persistent.ptx();
        let declarations: Vec<&str> = ptx
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(".shared") || l.starts_with(".extern .shared"))
            .collect();
        assert_eq!(
            declarations,
            [".extern .shared .align 16 .b8 smem_words[];"],
            "shared-memory declarations of the persistent kernels"
        );
    }
}
