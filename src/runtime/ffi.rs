//! Hand-written `#[repr(C)]` layouts of the subset of the PJRT C API that `basic` uses.
//!
//! Laid out from `pjrt_c_api.h` version 0.81 (the header shipped with the CPU plugin). Every
//! argument struct starts with `struct_size`; plugins accept a struct at least as large as they
//! expect, so sending `size_of::<T>()` (which may include tail padding) is always accepted, also by
//! newer plugins (0.115 was checked). Entries of [`PjrtApi`] past the plugin's own
//! `api.struct_size` must never be read: [`crate::runtime::plugin::Plugin`] checks the offset first.
#![allow(non_camel_case_types, dead_code)]

use std::ffi::{c_char, c_int, c_void};

/// Opaque handles. Only ever used behind raw pointers.
#[repr(C)]
pub struct PJRT_Error {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Client {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Device {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_DeviceDescription {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Event {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Buffer {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Executable {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_LoadedExecutable {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_TopologyDescription {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_SerializedExecutable {
    _p: [u8; 0],
}

pub type Ext = *mut c_void;

/// `PJRT_Buffer_Type` values used here.
pub const BUFFER_TYPE_PRED: c_int = 1;
pub const BUFFER_TYPE_S8: c_int = 2;
pub const BUFFER_TYPE_S16: c_int = 3;
pub const BUFFER_TYPE_S32: c_int = 4;
pub const BUFFER_TYPE_S64: c_int = 5;
pub const BUFFER_TYPE_U8: c_int = 6;
pub const BUFFER_TYPE_U16: c_int = 7;
pub const BUFFER_TYPE_U32: c_int = 8;
pub const BUFFER_TYPE_U64: c_int = 9;
pub const BUFFER_TYPE_F16: c_int = 10;
pub const BUFFER_TYPE_F32: c_int = 11;
pub const BUFFER_TYPE_F64: c_int = 12;
pub const BUFFER_TYPE_BF16: c_int = 13;

/// `PJRT_NamedValue_Type`.
pub const NAMED_VALUE_STRING: c_int = 0;
pub const NAMED_VALUE_INT64: c_int = 1;
pub const NAMED_VALUE_INT64_LIST: c_int = 2;
pub const NAMED_VALUE_FLOAT: c_int = 3;
pub const NAMED_VALUE_BOOL: c_int = 4;

/// `PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes`.
pub const HOST_BUFFER_IMMUTABLE_UNTIL_TRANSFER_COMPLETES: c_int = 1;
/// `PJRT_HostBufferSemantics_kImmutableOnlyDuringCall`: the plugin copies before returning.
pub const HOST_BUFFER_IMMUTABLE_ONLY_DURING_CALL: c_int = 0;

#[repr(C)]
#[derive(Clone, Copy)]
pub union NamedValueUnion {
    pub string_value: *const c_char,
    pub int64_value: i64,
    pub int64_array_value: *const i64,
    pub float_value: f32,
    pub bool_value: bool,
}

#[repr(C)]
pub struct PJRT_NamedValue {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub name: *const c_char,
    pub name_size: usize,
    pub type_: c_int,
    pub value: NamedValueUnion,
    pub value_size: usize,
}

#[repr(C)]
pub struct PJRT_Api_Version {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub major_version: c_int,
    pub minor_version: c_int,
}

#[repr(C)]
pub struct PJRT_Error_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub error: *mut PJRT_Error,
}

#[repr(C)]
pub struct PJRT_Error_Message_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub error: *const PJRT_Error,
    pub message: *const c_char,
    pub message_size: usize,
}

#[repr(C)]
pub struct PJRT_Error_GetCode_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub error: *const PJRT_Error,
    pub code: c_int,
}

#[repr(C)]
pub struct PJRT_Plugin_Initialize_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
}

#[repr(C)]
pub struct PJRT_Plugin_Attributes_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub attributes: *const PJRT_NamedValue,
    pub num_attributes: usize,
}

#[repr(C)]
pub struct PJRT_Event_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub event: *mut PJRT_Event,
}

#[repr(C)]
pub struct PJRT_Event_Await_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub event: *mut PJRT_Event,
}

#[repr(C)]
pub struct PJRT_Client_Create_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub create_options: *const PJRT_NamedValue,
    pub num_options: usize,
    pub kv_get_callback: *mut c_void,
    pub kv_get_user_arg: *mut c_void,
    pub kv_put_callback: *mut c_void,
    pub kv_put_user_arg: *mut c_void,
    pub client: *mut PJRT_Client,
    pub kv_try_get_callback: *mut c_void,
    pub kv_try_get_user_arg: *mut c_void,
}

#[repr(C)]
pub struct PJRT_Client_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub client: *mut PJRT_Client,
}

/// Shared layout of `PJRT_Client_PlatformName_Args` and `PJRT_Client_PlatformVersion_Args`.
#[repr(C)]
pub struct PJRT_Client_String_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub client: *mut PJRT_Client,
    pub value: *const c_char,
    pub value_size: usize,
}

/// Shared layout of `PJRT_Client_Devices_Args` and `PJRT_Client_AddressableDevices_Args`.
#[repr(C)]
pub struct PJRT_Client_Devices_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub client: *mut PJRT_Client,
    pub devices: *const *mut PJRT_Device,
    pub num_devices: usize,
}

#[repr(C)]
pub struct PJRT_Program {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub code: *mut c_char,
    pub code_size: usize,
    pub format: *const c_char,
    pub format_size: usize,
}

#[repr(C)]
pub struct PJRT_Client_Compile_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub client: *mut PJRT_Client,
    pub program: *const PJRT_Program,
    pub compile_options: *const c_char,
    pub compile_options_size: usize,
    pub executable: *mut PJRT_LoadedExecutable,
}

#[repr(C)]
pub struct PJRT_Client_BufferFromHostBuffer_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub client: *mut PJRT_Client,
    pub data: *const c_void,
    pub type_: c_int,
    pub dims: *const i64,
    pub num_dims: usize,
    pub byte_strides: *const i64,
    pub num_byte_strides: usize,
    pub host_buffer_semantics: c_int,
    pub device: *mut PJRT_Device,
    pub memory: *mut c_void,
    pub device_layout: *mut c_void,
    pub done_with_host_buffer: *mut PJRT_Event,
    pub buffer: *mut PJRT_Buffer,
}

#[repr(C)]
pub struct PJRT_DeviceDescription_Id_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub device_description: *mut PJRT_DeviceDescription,
    pub id: c_int,
}

/// Shared layout of `PJRT_DeviceDescription_Kind_Args`, `_DebugString_Args`, `_ToString_Args`.
#[repr(C)]
pub struct PJRT_DeviceDescription_String_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub device_description: *mut PJRT_DeviceDescription,
    pub value: *const c_char,
    pub value_size: usize,
}

#[repr(C)]
pub struct PJRT_Device_GetDescription_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub device: *mut PJRT_Device,
    pub device_description: *mut PJRT_DeviceDescription,
}

#[repr(C)]
pub struct PJRT_Executable_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *mut PJRT_Executable,
}

#[repr(C)]
pub struct PJRT_Executable_NumOutputs_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *mut PJRT_Executable,
    pub num_outputs: usize,
}

#[repr(C)]
pub struct PJRT_Executable_GetCostAnalysis_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *mut PJRT_Executable,
    pub num_properties: usize,
    pub properties: *const PJRT_NamedValue,
}

#[repr(C)]
#[derive(Default)]
pub struct PJRT_Executable_GetCompiledMemoryStats_Args {
    pub struct_size: usize,
    pub extension_start: usize,
    pub executable: usize,
    pub generated_code_size_in_bytes: i64,
    pub argument_size_in_bytes: i64,
    pub output_size_in_bytes: i64,
    pub alias_size_in_bytes: i64,
    pub temp_size_in_bytes: i64,
    pub host_generated_code_size_in_bytes: i64,
    pub host_argument_size_in_bytes: i64,
    pub host_output_size_in_bytes: i64,
    pub host_alias_size_in_bytes: i64,
    pub host_temp_size_in_bytes: i64,
    pub peak_memory_in_bytes: i64,
}

#[repr(C)]
pub struct PJRT_LoadedExecutable_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *mut PJRT_LoadedExecutable,
}

#[repr(C)]
pub struct PJRT_LoadedExecutable_GetExecutable_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub loaded_executable: *mut PJRT_LoadedExecutable,
    pub executable: *mut PJRT_Executable,
}

#[repr(C)]
pub struct PJRT_LoadedExecutable_AddressableDevices_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *mut PJRT_LoadedExecutable,
    pub addressable_devices: *const *mut PJRT_Device,
    pub num_addressable_devices: usize,
}

#[repr(C)]
pub struct PJRT_ExecuteOptions {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub send_callbacks: *mut c_void,
    pub recv_callbacks: *mut c_void,
    pub num_send_ops: usize,
    pub num_recv_ops: usize,
    pub launch_id: c_int,
    pub non_donatable_input_indices: *const i64,
    pub num_non_donatable_input_indices: usize,
    pub context: *mut c_void,
    pub call_location: *const c_char,
    pub num_tasks: usize,
    pub task_ids: *mut c_int,
    pub incarnation_ids: *mut i64,
}

#[repr(C)]
pub struct PJRT_LoadedExecutable_Execute_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *mut PJRT_LoadedExecutable,
    pub options: *mut PJRT_ExecuteOptions,
    pub argument_lists: *const *const *mut PJRT_Buffer,
    pub num_devices: usize,
    pub num_args: usize,
    pub output_lists: *const *mut *mut PJRT_Buffer,
    pub device_complete_events: *mut *mut PJRT_Event,
    pub execute_device: *mut PJRT_Device,
}

#[repr(C)]
pub struct PJRT_Buffer_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub buffer: *mut PJRT_Buffer,
}

#[repr(C)]
pub struct PJRT_Buffer_ElementType_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub buffer: *mut PJRT_Buffer,
    pub type_: c_int,
}

#[repr(C)]
pub struct PJRT_Buffer_Dimensions_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub buffer: *mut PJRT_Buffer,
    pub dims: *const i64,
    pub num_dims: usize,
}

#[repr(C)]
pub struct PJRT_Buffer_ToHostBuffer_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub src: *mut PJRT_Buffer,
    pub host_layout: *mut c_void,
    pub dst: *mut c_void,
    pub dst_size: usize,
    pub event: *mut PJRT_Event,
}

#[repr(C)]
pub struct PJRT_Event_IsReady_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub event: *mut PJRT_Event,
    pub is_ready: bool,
}

#[repr(C)]
pub struct PJRT_Buffer_IsOnCpu_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub buffer: *mut PJRT_Buffer,
    pub is_on_cpu: bool,
}

#[repr(C)]
pub struct PJRT_Buffer_ReadyEvent_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub buffer: *mut PJRT_Buffer,
    pub event: *mut PJRT_Event,
}

/// Shared layout of `PJRT_Buffer_IncreaseExternalReferenceCount_Args` and the decrease.
#[repr(C)]
pub struct PJRT_Buffer_ExternalReference_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub buffer: *mut PJRT_Buffer,
}

#[repr(C)]
pub struct PJRT_Buffer_OpaqueDeviceMemoryDataPointer_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub buffer: *mut PJRT_Buffer,
    pub device_memory_ptr: *mut c_void,
}

/// `PJRT_Buffer_MemoryLayout_Tiled`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PJRT_Buffer_MemoryLayout_Tiled {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub minor_to_major: *const i64,
    pub minor_to_major_size: usize,
    pub tile_dims: *const i64,
    pub tile_dim_sizes: *const usize,
    pub num_tiles: usize,
}

/// `PJRT_Buffer_MemoryLayout`; the union's other member (strides) is smaller than `tiled`.
#[repr(C)]
pub struct PJRT_Buffer_MemoryLayout {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub tiled: PJRT_Buffer_MemoryLayout_Tiled,
    pub type_: c_int,
}

/// `PJRT_Buffer_MemoryLayout_Type_Tiled`.
pub const MEMORY_LAYOUT_TILED: c_int = 0;

#[repr(C)]
pub struct PJRT_Buffer_GetMemoryLayout_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub buffer: *mut PJRT_Buffer,
    pub layout: PJRT_Buffer_MemoryLayout,
}

#[repr(C)]
pub struct PJRT_DeviceDescription_ProcessIndex_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub device_description: *mut PJRT_DeviceDescription,
    pub process_index: c_int,
}

#[repr(C)]
pub struct PJRT_DeviceDescription_Attributes_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub device_description: *mut PJRT_DeviceDescription,
    pub num_attributes: usize,
    pub attributes: *const PJRT_NamedValue,
}

#[repr(C)]
pub struct PJRT_Executable_SizeOfGeneratedCodeInBytes_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *mut PJRT_Executable,
    pub size_in_bytes: i64,
}

#[repr(C)]
pub struct PJRT_Executable_OptimizedProgram_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *mut PJRT_Executable,
    pub program: *mut PJRT_Program,
}

#[repr(C)]
pub struct PJRT_Executable_Serialize_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *const PJRT_Executable,
    pub serialized_bytes: *const c_char,
    pub serialized_bytes_size: usize,
    pub serialized_executable: *mut PJRT_SerializedExecutable,
    pub serialized_executable_deleter: Option<unsafe extern "C" fn(*mut PJRT_SerializedExecutable)>,
}

#[repr(C)]
pub struct PJRT_Executable_DeserializeAndLoad_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub client: *mut PJRT_Client,
    pub serialized_executable: *const c_char,
    pub serialized_executable_size: usize,
    pub loaded_executable: *mut PJRT_LoadedExecutable,
    pub overridden_serialized_compile_options: *const c_char,
    pub overridden_serialized_compile_options_size: usize,
}

#[repr(C)]
pub struct PJRT_Executable_Fingerprint_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub executable: *mut PJRT_Executable,
    pub executable_fingerprint: *const c_char,
    pub executable_fingerprint_size: usize,
}

#[repr(C)]
pub struct PJRT_TopologyDescription_Create_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub topology_name: *const c_char,
    pub topology_name_size: usize,
    pub create_options: *const PJRT_NamedValue,
    pub num_options: usize,
    pub topology: *mut PJRT_TopologyDescription,
}

#[repr(C)]
pub struct PJRT_TopologyDescription_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub topology: *mut PJRT_TopologyDescription,
}

/// Shared layout of `PJRT_TopologyDescription_PlatformName_Args` and `_PlatformVersion_Args`.
#[repr(C)]
pub struct PJRT_TopologyDescription_String_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub topology: *mut PJRT_TopologyDescription,
    pub value: *const c_char,
    pub value_size: usize,
}

#[repr(C)]
pub struct PJRT_TopologyDescription_GetDeviceDescriptions_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub topology: *mut PJRT_TopologyDescription,
    pub descriptions: *const *mut PJRT_DeviceDescription,
    pub num_descriptions: usize,
}

/// `PJRT_Compile_Args`: compiling for a topology, with no client (compile-only).
#[repr(C)]
pub struct PJRT_Compile_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub topology: *mut PJRT_TopologyDescription,
    pub program: *const PJRT_Program,
    pub compile_options: *const c_char,
    pub compile_options_size: usize,
    pub client: *mut PJRT_Client,
    pub executable: *mut PJRT_Executable,
}

/// A PJRT entry point: takes a pointer to its args struct, returns an error or null.
pub type Entry<A> = Option<unsafe extern "C" fn(args: *mut A) -> *mut PJRT_Error>;
/// An entry whose layout `basic` does not use; kept only so later fields sit at the right offset.
pub type Unused = Option<unsafe extern "C" fn()>;

/// `PJRT_Api` up to the last field `basic` reads (`PJRT_Executable_GetCompiledMemoryStats`).
/// Field order follows the 0.81 header exactly.
#[repr(C)]
pub struct PjrtApi {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub pjrt_api_version: PJRT_Api_Version,

    pub error_destroy: Entry<PJRT_Error_Destroy_Args>,
    pub error_message: Entry<PJRT_Error_Message_Args>,
    pub error_get_code: Entry<PJRT_Error_GetCode_Args>,

    pub plugin_initialize: Entry<PJRT_Plugin_Initialize_Args>,
    pub plugin_attributes: Entry<PJRT_Plugin_Attributes_Args>,

    pub event_destroy: Entry<PJRT_Event_Destroy_Args>,
    pub event_is_ready: Entry<PJRT_Event_IsReady_Args>,
    pub event_error: Unused,
    pub event_await: Entry<PJRT_Event_Await_Args>,
    pub event_on_ready: Unused,

    pub client_create: Entry<PJRT_Client_Create_Args>,
    pub client_destroy: Entry<PJRT_Client_Destroy_Args>,
    pub client_platform_name: Entry<PJRT_Client_String_Args>,
    pub client_process_index: Unused,
    pub client_platform_version: Entry<PJRT_Client_String_Args>,
    pub client_devices: Entry<PJRT_Client_Devices_Args>,
    pub client_addressable_devices: Entry<PJRT_Client_Devices_Args>,
    pub client_lookup_device: Unused,
    pub client_lookup_addressable_device: Unused,
    pub client_addressable_memories: Unused,
    pub client_compile: Entry<PJRT_Client_Compile_Args>,
    pub client_default_device_assignment: Unused,
    pub client_buffer_from_host_buffer: Entry<PJRT_Client_BufferFromHostBuffer_Args>,

    pub device_description_id: Entry<PJRT_DeviceDescription_Id_Args>,
    pub device_description_process_index: Entry<PJRT_DeviceDescription_ProcessIndex_Args>,
    pub device_description_attributes: Entry<PJRT_DeviceDescription_Attributes_Args>,
    pub device_description_kind: Entry<PJRT_DeviceDescription_String_Args>,
    pub device_description_debug_string: Entry<PJRT_DeviceDescription_String_Args>,
    pub device_description_to_string: Entry<PJRT_DeviceDescription_String_Args>,

    pub device_get_description: Entry<PJRT_Device_GetDescription_Args>,
    pub device_is_addressable: Unused,
    pub device_local_hardware_id: Unused,
    pub device_addressable_memories: Unused,
    pub device_default_memory: Unused,
    pub device_memory_stats: Unused,

    pub memory_id: Unused,
    pub memory_kind: Unused,
    pub memory_debug_string: Unused,
    pub memory_to_string: Unused,
    pub memory_addressable_by_devices: Unused,

    pub executable_destroy: Entry<PJRT_Executable_Destroy_Args>,
    pub executable_name: Unused,
    pub executable_num_replicas: Unused,
    pub executable_num_partitions: Unused,
    pub executable_num_outputs: Entry<PJRT_Executable_NumOutputs_Args>,
    pub executable_size_of_generated_code_in_bytes:
        Entry<PJRT_Executable_SizeOfGeneratedCodeInBytes_Args>,
    pub executable_get_cost_analysis: Entry<PJRT_Executable_GetCostAnalysis_Args>,
    pub executable_output_memory_kinds: Unused,
    pub executable_optimized_program: Entry<PJRT_Executable_OptimizedProgram_Args>,
    pub executable_serialize: Entry<PJRT_Executable_Serialize_Args>,

    pub loaded_executable_destroy: Entry<PJRT_LoadedExecutable_Destroy_Args>,
    pub loaded_executable_get_executable: Entry<PJRT_LoadedExecutable_GetExecutable_Args>,
    pub loaded_executable_addressable_devices: Entry<PJRT_LoadedExecutable_AddressableDevices_Args>,
    pub loaded_executable_delete: Unused,
    pub loaded_executable_is_deleted: Unused,
    pub loaded_executable_execute: Entry<PJRT_LoadedExecutable_Execute_Args>,
    pub executable_deserialize_and_load: Entry<PJRT_Executable_DeserializeAndLoad_Args>,
    pub loaded_executable_fingerprint: Unused,

    pub buffer_destroy: Entry<PJRT_Buffer_Destroy_Args>,
    pub buffer_element_type: Entry<PJRT_Buffer_ElementType_Args>,
    pub buffer_dimensions: Entry<PJRT_Buffer_Dimensions_Args>,
    pub buffer_unpadded_dimensions: Unused,
    pub buffer_dynamic_dimension_indices: Unused,
    pub buffer_get_memory_layout: Entry<PJRT_Buffer_GetMemoryLayout_Args>,
    pub buffer_on_device_size_in_bytes: Unused,
    pub buffer_device: Unused,
    pub buffer_memory: Unused,
    pub buffer_delete: Unused,
    pub buffer_is_deleted: Unused,
    pub buffer_copy_to_device: Unused,
    pub buffer_to_host_buffer: Entry<PJRT_Buffer_ToHostBuffer_Args>,
    pub buffer_is_on_cpu: Entry<PJRT_Buffer_IsOnCpu_Args>,
    pub buffer_ready_event: Entry<PJRT_Buffer_ReadyEvent_Args>,
    pub buffer_unsafe_pointer: Unused,
    pub buffer_increase_external_reference_count: Entry<PJRT_Buffer_ExternalReference_Args>,
    pub buffer_decrease_external_reference_count: Entry<PJRT_Buffer_ExternalReference_Args>,
    pub buffer_opaque_device_memory_data_pointer:
        Entry<PJRT_Buffer_OpaqueDeviceMemoryDataPointer_Args>,

    pub copy_to_device_stream_destroy: Unused,
    pub copy_to_device_stream_add_chunk: Unused,
    pub copy_to_device_stream_total_bytes: Unused,
    pub copy_to_device_stream_granule_size: Unused,
    pub copy_to_device_stream_current_bytes: Unused,

    pub topology_description_create: Entry<PJRT_TopologyDescription_Create_Args>,
    pub topology_description_destroy: Entry<PJRT_TopologyDescription_Destroy_Args>,
    pub topology_description_platform_name: Entry<PJRT_TopologyDescription_String_Args>,
    pub topology_description_platform_version: Entry<PJRT_TopologyDescription_String_Args>,
    pub topology_description_get_device_descriptions:
        Entry<PJRT_TopologyDescription_GetDeviceDescriptions_Args>,
    pub topology_description_serialize: Unused,
    pub topology_description_attributes: Unused,

    pub compile: Entry<PJRT_Compile_Args>,

    pub executable_output_element_types: Unused,
    pub executable_output_dimensions: Unused,

    pub buffer_copy_to_memory: Unused,

    pub client_create_view_of_device_buffer: Unused,

    pub executable_fingerprint: Entry<PJRT_Executable_Fingerprint_Args>,

    pub client_topology_description: Unused,

    pub executable_get_compiled_memory_stats: Entry<PJRT_Executable_GetCompiledMemoryStats_Args>,
}

/// Byte offset of one entry of [`PjrtApi`]; compared with the plugin's `struct_size`.
#[macro_export]
#[doc(hidden)]
macro_rules! pjrt_api_offset {
    ($field:ident) => {
        std::mem::offset_of!($crate::runtime::ffi::PjrtApi, $field)
    };
}

// ---- Key-value store callbacks (`PJRT_Client_Create_Args.kv_*`), implemented by `basic` and
// called by the plugin. The plugin builds these args on its stack and fills only the inputs
// (never `struct_size`); sizes and offsets below were printed by a C program against the 0.81
// header (get 80 bytes, `timeout_in_ms` at 32; try-get 72; put 64), checked by
// tests/kv_callbacks.rs.

/// `PJRT_CallbackError`: made by the plugin; a callback calls it to build the error it returns.
/// The message only needs to live for the call (the plugin copies it).
pub type PJRT_CallbackError = Option<
    unsafe extern "C" fn(
        code: c_int,
        message: *const c_char,
        message_size: usize,
    ) -> *mut PJRT_Error,
>;

/// `PJRT_KeyValueGetCallback_ValueDeleter` (and the try-get one, the same type): frees a value
/// a callback returned. The plugin calls it after every successful get, so it is never null.
pub type PJRT_KeyValue_ValueDeleter = Option<unsafe extern "C" fn(value: *mut c_char)>;

#[repr(C)]
pub struct PJRT_KeyValueGetCallback_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub key: *const c_char,
    pub key_size: usize,
    pub timeout_in_ms: c_int,
    pub callback_error: *mut PJRT_CallbackError,
    pub user_arg: *mut c_void,
    pub value: *mut c_char,
    pub value_size: usize,
    pub value_deleter_callback: PJRT_KeyValue_ValueDeleter,
}

#[repr(C)]
pub struct PJRT_KeyValueTryGetCallback_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub key: *const c_char,
    pub key_size: usize,
    pub callback_error: *mut PJRT_CallbackError,
    pub user_arg: *mut c_void,
    pub value: *mut c_char,
    pub value_size: usize,
    pub value_deleter_callback: PJRT_KeyValue_ValueDeleter,
}

#[repr(C)]
pub struct PJRT_KeyValuePutCallback_Args {
    pub struct_size: usize,
    pub extension_start: Ext,
    pub key: *const c_char,
    pub key_size: usize,
    pub value: *const c_char,
    pub value_size: usize,
    pub callback_error: *mut PJRT_CallbackError,
    pub user_arg: *mut c_void,
}

pub type PJRT_KeyValueGetCallback =
    unsafe extern "C" fn(args: *mut PJRT_KeyValueGetCallback_Args) -> *mut PJRT_Error;
pub type PJRT_KeyValueTryGetCallback =
    unsafe extern "C" fn(args: *mut PJRT_KeyValueTryGetCallback_Args) -> *mut PJRT_Error;
pub type PJRT_KeyValuePutCallback =
    unsafe extern "C" fn(args: *mut PJRT_KeyValuePutCallback_Args) -> *mut PJRT_Error;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Offsets and sizes printed by a C program compiled against the 0.81 header
    /// (`offsetof(PJRT_Api, ...)`, `sizeof(...)`) on x86-64.
    #[test]
    fn api_layout_matches_header() {
        assert_eq!(size_of::<PJRT_Api_Version>(), 24);
        assert_eq!(offset_of!(PjrtApi, error_destroy), 40);
        assert_eq!(offset_of!(PjrtApi, client_compile), 200);
        assert_eq!(offset_of!(PjrtApi, loaded_executable_execute), 480);
        assert_eq!(offset_of!(PjrtApi, buffer_destroy), 504);
        assert_eq!(offset_of!(PjrtApi, buffer_to_host_buffer), 600);
        assert_eq!(
            offset_of!(PjrtApi, executable_get_compiled_memory_stats),
            808
        );
        assert_eq!(size_of::<PJRT_NamedValue>(), 56);
        assert_eq!(size_of::<PJRT_Buffer_MemoryLayout>(), 80);
        assert_eq!(size_of::<PJRT_Buffer_GetMemoryLayout_Args>(), 104);
        assert_eq!(
            offset_of!(PjrtApi, buffer_opaque_device_memory_data_pointer),
            648
        );
        assert_eq!(size_of::<PJRT_ExecuteOptions>(), 112);
        assert_eq!(size_of::<PJRT_Client_Create_Args>(), 88);
        assert_eq!(
            size_of::<PJRT_Executable_GetCompiledMemoryStats_Args>(),
            112
        );
        assert_eq!(size_of::<PJRT_Client_BufferFromHostBuffer_Args>(), 120);
        assert_eq!(size_of::<PJRT_LoadedExecutable_Execute_Args>(), 80);
        // The compile-only entries (same C program).
        assert_eq!(offset_of!(PjrtApi, device_description_process_index), 232);
        assert_eq!(offset_of!(PjrtApi, device_description_attributes), 240);
        assert_eq!(
            offset_of!(PjrtApi, executable_size_of_generated_code_in_bytes),
            400
        );
        assert_eq!(offset_of!(PjrtApi, executable_optimized_program), 424);
        assert_eq!(offset_of!(PjrtApi, executable_serialize), 432);
        assert_eq!(offset_of!(PjrtApi, executable_deserialize_and_load), 488);
        assert_eq!(offset_of!(PjrtApi, topology_description_create), 696);
        assert_eq!(offset_of!(PjrtApi, topology_description_destroy), 704);
        assert_eq!(offset_of!(PjrtApi, topology_description_platform_name), 712);
        assert_eq!(
            offset_of!(PjrtApi, topology_description_get_device_descriptions),
            728
        );
        assert_eq!(offset_of!(PjrtApi, compile), 752);
        assert_eq!(offset_of!(PjrtApi, executable_fingerprint), 792);
        assert_eq!(size_of::<PJRT_TopologyDescription_Create_Args>(), 56);
        assert_eq!(size_of::<PJRT_Compile_Args>(), 64);
        assert_eq!(size_of::<PJRT_Executable_Serialize_Args>(), 56);
        assert_eq!(size_of::<PJRT_Executable_DeserializeAndLoad_Args>(), 64);
        assert_eq!(size_of::<PJRT_Executable_OptimizedProgram_Args>(), 32);
        assert_eq!(size_of::<PJRT_DeviceDescription_Attributes_Args>(), 40);
        assert_eq!(
            size_of::<PJRT_TopologyDescription_GetDeviceDescriptions_Args>(),
            40
        );
        assert_eq!(size_of::<PJRT_Executable_Fingerprint_Args>(), 40);
        assert_eq!(size_of::<PJRT_DeviceDescription_ProcessIndex_Args>(), 32);
    }
}
