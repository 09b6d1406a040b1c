//! The compute devices llama.cpp sees in this build, and what `-ngl` puts on them: said before
//! a run, so that a GPU flag on a build or machine without a GPU is an error that names the
//! cause, never a slow CPU run that looks like a GPU one.

use serde::Serialize;

use super::{backend, EngineError, Model};

/// One device of a ggml backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// ggml's name for it (`CPU`, `Vulkan0`, `CUDA0`, `RPC[host:port]`).
    pub name: String,
    /// What it is (`NVIDIA H100 80GB HBM3`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub description: String,
    /// The backend that drives it (`CPU`, `Vulkan`, `CUDA`, `Metal`, `RPC`).
    pub backend: String,
    /// `cpu`, `gpu`, `igpu`, `accel` or `unknown`.
    pub kind: &'static str,
    /// Its memory, bytes (the system's for the CPU).
    pub memory_total: u64,
    /// What of it is free now, bytes.
    pub memory_free: u64,
}

impl Device {
    /// Whether `-ngl` can put layers on it.
    pub fn takes_layers(&self) -> bool {
        matches!(self.kind, "gpu" | "igpu")
    }
}

/// Every device llama.cpp registered in this build.
///
/// # Errors
/// [`EngineError::Backend`] when llama.cpp cannot be initialised.
pub fn devices() -> Result<Vec<Device>, EngineError> {
    use llama_cpp_2::LlamaBackendDeviceType as Kind;
    backend()?;
    Ok(llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .map(|d| Device {
            name: d.name,
            description: d.description,
            backend: d.backend,
            kind: match d.device_type {
                Kind::Cpu => "cpu",
                Kind::Gpu => "gpu",
                Kind::IntegratedGpu => "igpu",
                Kind::Accelerator => "accel",
                Kind::Unknown => "unknown",
            },
            memory_total: d.memory_total as u64,
            memory_free: d.memory_free as u64,
        })
        .collect())
}

/// Refuses `-ngl` where no device can take layers, naming the devices there are.
///
/// # Errors
/// [`EngineError::NoGpu`].
pub fn check_offload(gpu_layers: u32) -> Result<(), EngineError> {
    if gpu_layers == 0 {
        return Ok(());
    }
    let found = devices()?;
    if found.iter().any(Device::takes_layers) {
        return Ok(());
    }
    Err(EngineError::NoGpu {
        gpu_layers,
        devices: found
            .iter()
            .map(|d| format!("{} ({})", d.name, d.description))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// What `-ngl` does with a model: its layers, how many go to the device, and which device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Offload {
    /// The model's repeating layers, plus its output layer.
    pub layers: u32,
    /// Layers `-ngl` puts on the device (llama.cpp counts the output layer last).
    pub offloaded: u32,
    /// The device that takes them (llama.cpp's first GPU), if any.
    pub device: Option<String>,
}

impl Offload {
    /// One line for a terminal.
    pub fn render(&self, gpu_layers: u32) -> String {
        match (&self.device, self.offloaded) {
            (_, 0) => format!("-ngl {gpu_layers}: all {} layers on the CPU", self.layers),
            (Some(device), n) => format!(
                "-ngl {gpu_layers}: {n} of {} layers on {device}{}",
                self.layers,
                if n == self.layers {
                    " (the whole model)"
                } else {
                    "; the rest on the CPU"
                }
            ),
            (None, _) => {
                format!("-ngl {gpu_layers}: no device here takes layers; a run would be refused")
            }
        }
    }
}

impl Model {
    /// The free memory of the device this model's layers were offloaded to; `None` when it
    /// runs on the CPU. With layers offloaded, the weights and the KV cache live there, so
    /// the default memory budget is taken from it.
    ///
    /// # Errors
    /// [`EngineError::Backend`] when llama.cpp cannot be initialised.
    pub fn offload_device_memory(&self) -> Result<Option<u64>, EngineError> {
        if self.gpu_layers == 0 {
            return Ok(None);
        }
        Ok(devices()?
            .into_iter()
            .find(Device::takes_layers)
            .map(|d| d.memory_free))
    }

    /// What `-ngl gpu_layers` does with this model on the devices there are.
    ///
    /// # Errors
    /// [`EngineError::Backend`] when llama.cpp cannot be initialised.
    pub fn offload(&self, gpu_layers: u32) -> Result<Offload, EngineError> {
        let layers = self.model.n_layer() + 1;
        let device = devices()?
            .into_iter()
            .find(Device::takes_layers)
            .map(|d| format!("{} ({})", d.name, d.description));
        Ok(Offload {
            layers,
            offloaded: gpu_layers.min(layers),
            device,
        })
    }
}
