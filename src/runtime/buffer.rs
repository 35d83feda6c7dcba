//! Device buffers: arrays on a device, uploaded from and copied back to host arrays.

use std::ffi::c_int;
use std::ptr::{null, null_mut};
use std::sync::Arc;

use super::call::await_event;
use super::client::{ClientInner, RawDevice};
use super::ffi;
use crate::array::HostArray;
use crate::dtype::{DType, TensorType};
use crate::error::{Error, Result};

fn buffer_type(d: DType) -> c_int {
    match d {
        DType::Pred => ffi::BUFFER_TYPE_PRED,
        DType::U8 => ffi::BUFFER_TYPE_U8,
        DType::S32 => ffi::BUFFER_TYPE_S32,
        DType::U32 => ffi::BUFFER_TYPE_U32,
        DType::S64 => ffi::BUFFER_TYPE_S64,
        DType::U64 => ffi::BUFFER_TYPE_U64,
        DType::BF16 => ffi::BUFFER_TYPE_BF16,
        DType::F32 => ffi::BUFFER_TYPE_F32,
        DType::F64 => ffi::BUFFER_TYPE_F64,
    }
}

fn dtype_of_buffer_type(t: c_int) -> Result<DType> {
    DType::ALL
        .into_iter()
        .find(|&d| buffer_type(d) == t)
        .ok_or_else(|| {
            Error::Array(format!(
                "the device returned a buffer of PJRT type {t}, which basic does not read"
            ))
        })
}

pub(super) fn upload_to(
    inner: &Arc<ClientInner>,
    array: &HostArray,
    device: RawDevice,
) -> Result<DeviceBuffer> {
    let dims = array.shape();
    let mut a = args!(PJRT_Client_BufferFromHostBuffer_Args {
        client: inner.raw,
        data: array.bytes().as_ptr().cast(),
        type_: buffer_type(array.dtype()),
        dims: dims.as_ptr(),
        num_dims: dims.len(),
        byte_strides: null(),
        num_byte_strides: 0,
        host_buffer_semantics: ffi::HOST_BUFFER_IMMUTABLE_ONLY_DURING_CALL,
        device: device.0,
        memory: null_mut(),
        device_layout: null_mut(),
        done_with_host_buffer: null_mut(),
        buffer: null_mut(),
    });
    pjrt!(
        inner.plugin,
        client_buffer_from_host_buffer,
        "PJRT_Client_BufferFromHostBuffer",
        &mut a
    )?;
    let buffer = DeviceBuffer {
        client: inner.clone(),
        raw: a.buffer,
        device,
        ty: TensorType {
            dtype: array.dtype(),
            shape: dims.to_vec(),
        },
    };
    // The host data must stay untouched until the transfer is done: wait here, while `array` is
    // still borrowed.
    await_event(
        &inner.plugin,
        a.done_with_host_buffer,
        "PJRT_Client_BufferFromHostBuffer",
    )?;
    Ok(buffer)
}

/// A buffer's memory held in place by an external reference: while it lives, the plugin neither
/// frees nor moves the memory, so its bytes can be read directly. Released exactly once, by
/// [`Pinned::release`] or on drop.
struct Pinned<'b> {
    buffer: &'b DeviceBuffer,
    held: bool,
}

impl<'b> Pinned<'b> {
    fn new(buffer: &'b DeviceBuffer) -> Result<Pinned<'b>> {
        let mut a = args!(PJRT_Buffer_ExternalReference_Args { buffer: buffer.raw });
        pjrt!(
            buffer.client.plugin,
            buffer_increase_external_reference_count,
            "PJRT_Buffer_IncreaseExternalReferenceCount",
            &mut a
        )?;
        Ok(Pinned { buffer, held: true })
    }

    /// Drops the reference, reporting a failure.
    fn release(mut self) -> Result<()> {
        self.held = false;
        let mut a = args!(PJRT_Buffer_ExternalReference_Args {
            buffer: self.buffer.raw
        });
        pjrt!(
            self.buffer.client.plugin,
            buffer_decrease_external_reference_count,
            "PJRT_Buffer_DecreaseExternalReferenceCount",
            &mut a
        )
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        if self.held {
            destroy!(
                self.buffer.client.plugin,
                buffer_decrease_external_reference_count,
                "PJRT_Buffer_DecreaseExternalReferenceCount",
                PJRT_Buffer_ExternalReference_Args {
                    buffer: self.buffer.raw
                }
            );
        }
    }
}

/// An array on a device. Dropping it frees the device memory.
pub struct DeviceBuffer {
    pub(super) client: Arc<ClientInner>,
    pub(super) raw: *mut ffi::PJRT_Buffer,
    pub(super) device: RawDevice,
    ty: TensorType,
}

// SAFETY: see `ClientInner`.
unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    pub fn shape(&self) -> &[i64] {
        &self.ty.shape
    }

    /// Copies the buffer back to the host.
    pub fn to_host(&self) -> Result<HostArray> {
        let n = crate::array::element_count(&self.ty.shape)? * self.ty.dtype.size_in_bytes();
        if let Some(data) = self.copy_from_cpu_memory(n)? {
            return HostArray::from_bytes(self.ty.dtype, &self.ty.shape, data);
        }
        self.to_host_by_transfer()
    }

    /// Copies the buffer back with `PJRT_Buffer_ToHostBuffer`, the path every plugin supports
    /// ([`to_host`](Self::to_host) takes a faster one for host memory where it can).
    pub fn to_host_by_transfer(&self) -> Result<HostArray> {
        let n = crate::array::element_count(&self.ty.shape)? * self.ty.dtype.size_in_bytes();
        let mut data = vec![0u8; n];
        // With no host layout the plugin writes the dense row-major array, whose size is known:
        // one call, and a plugin that disagrees about the size fails it with an error.
        let mut a = args!(PJRT_Buffer_ToHostBuffer_Args {
            src: self.raw,
            host_layout: null_mut(),
            dst: data.as_mut_ptr().cast(),
            dst_size: n,
            event: null_mut(),
        });
        pjrt!(
            self.client.plugin,
            buffer_to_host_buffer,
            "PJRT_Buffer_ToHostBuffer",
            &mut a
        )?;
        await_event(&self.client.plugin, a.event, "PJRT_Buffer_ToHostBuffer")?;
        HostArray::from_bytes(self.ty.dtype, &self.ty.shape, data)
    }

    /// The fast path for buffers in host memory (CPU plugins): wait until the buffer is ready and
    /// copy its bytes directly, instead of `ToHostBuffer`, which hands the copy to a worker thread
    /// and costs two thread switches. Taken only for a dense row-major layout (minor-to-major
    /// `rank-1, ..., 0`, no tiles) while an external reference pins the memory; `None` otherwise.
    fn copy_from_cpu_memory(&self, n: usize) -> Result<Option<Vec<u8>>> {
        let plugin = &self.client.plugin;
        if !(has_entry!(plugin, buffer_opaque_device_memory_data_pointer)
            && has_entry!(plugin, buffer_is_on_cpu)
            && has_entry!(plugin, buffer_get_memory_layout)
            && has_entry!(plugin, buffer_ready_event)
            && has_entry!(plugin, buffer_increase_external_reference_count)
            && has_entry!(plugin, buffer_decrease_external_reference_count))
        {
            return Ok(None);
        }
        let mut on_cpu = args!(PJRT_Buffer_IsOnCpu_Args {
            buffer: self.raw,
            is_on_cpu: false
        });
        pjrt!(plugin, buffer_is_on_cpu, "PJRT_Buffer_IsOnCpu", &mut on_cpu)?;
        if !on_cpu.is_on_cpu {
            return Ok(None);
        }
        let mut ready = args!(PJRT_Buffer_ReadyEvent_Args {
            buffer: self.raw,
            event: null_mut()
        });
        pjrt!(
            plugin,
            buffer_ready_event,
            "PJRT_Buffer_ReadyEvent",
            &mut ready
        )?;
        await_event(plugin, ready.event, "PJRT_Buffer_ReadyEvent")?;

        // SAFETY: an all-zero layout is a valid "out" value for the plugin to overwrite.
        let mut layout = args!(PJRT_Buffer_GetMemoryLayout_Args {
            buffer: self.raw,
            layout: unsafe { std::mem::zeroed() },
        });
        if pjrt!(
            plugin,
            buffer_get_memory_layout,
            "PJRT_Buffer_GetMemoryLayout",
            &mut layout
        )
        .is_err()
        {
            return Ok(None);
        }
        let l = &layout.layout;
        let rank = self.ty.shape.len();
        let dense = l.type_ == ffi::MEMORY_LAYOUT_TILED
            && l.tiled.num_tiles == 0
            && l.tiled.minor_to_major_size == rank
            && (rank == 0
                // SAFETY: the plugin owns `minor_to_major_size` entries.
                || unsafe { std::slice::from_raw_parts(l.tiled.minor_to_major, rank) }
                    .iter()
                    .rev()
                    .enumerate()
                    .all(|(i, &d)| d == i as i64));
        if !dense {
            return Ok(None);
        }
        let pin = Pinned::new(self)?;
        let mut ptr = args!(PJRT_Buffer_OpaqueDeviceMemoryDataPointer_Args {
            buffer: self.raw,
            device_memory_ptr: null_mut(),
        });
        let got = pjrt!(
            plugin,
            buffer_opaque_device_memory_data_pointer,
            "PJRT_Buffer_OpaqueDeviceMemoryDataPointer",
            &mut ptr
        );
        let data = match got {
            Ok(()) if !ptr.device_memory_ptr.is_null() || n == 0 => {
                // SAFETY: the buffer is ready, dense, `n` bytes long, in host memory, and pinned
                // by the external reference until the copy is done.
                Some(if n == 0 {
                    Vec::new()
                } else {
                    unsafe { std::slice::from_raw_parts(ptr.device_memory_ptr as *const u8, n) }
                        .to_vec()
                })
            }
            _ => None,
        };
        pin.release()?;
        Ok(data)
    }

    pub(super) fn from_output(
        client: &Arc<ClientInner>,
        raw: *mut ffi::PJRT_Buffer,
        device: RawDevice,
    ) -> Result<DeviceBuffer> {
        // Owned from here on, so it is freed even if a query below fails.
        let mut buf = DeviceBuffer {
            client: client.clone(),
            raw,
            device,
            ty: TensorType {
                dtype: DType::F32,
                shape: vec![],
            },
        };
        let mut t = args!(PJRT_Buffer_ElementType_Args {
            buffer: raw,
            type_: 0
        });
        pjrt!(
            client.plugin,
            buffer_element_type,
            "PJRT_Buffer_ElementType",
            &mut t
        )?;
        let mut d = args!(PJRT_Buffer_Dimensions_Args {
            buffer: raw,
            dims: null(),
            num_dims: 0,
        });
        pjrt!(
            client.plugin,
            buffer_dimensions,
            "PJRT_Buffer_Dimensions",
            &mut d
        )?;
        buf.ty = TensorType {
            dtype: dtype_of_buffer_type(t.type_)?,
            shape: if d.num_dims == 0 {
                vec![]
            } else {
                // SAFETY: the buffer owns `num_dims` dimensions.
                unsafe { std::slice::from_raw_parts(d.dims, d.num_dims) }.to_vec()
            },
        };
        Ok(buf)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        destroy!(
            self.client.plugin,
            buffer_destroy,
            "PJRT_Buffer_Destroy",
            PJRT_Buffer_Destroy_Args { buffer: self.raw }
        );
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer<{}>", self.ty)
    }
}

/// An argument buffer for [`Executable::execute_owned`]: owned (consumed by the call, as a
/// donated argument must be) or borrowed.
pub enum ArgBuffer<'a> {
    Owned(DeviceBuffer),
    Borrowed(&'a DeviceBuffer),
}

impl ArgBuffer<'_> {
    pub fn buffer(&self) -> &DeviceBuffer {
        match self {
            ArgBuffer::Owned(b) => b,
            ArgBuffer::Borrowed(b) => b,
        }
    }
}
