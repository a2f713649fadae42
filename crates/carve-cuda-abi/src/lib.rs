//! The part of the CUDA driver API's C ABI that carve uses: return codes, handle types, the
//! structs it reads and the signatures of the entry points it calls, hooks or implements. One
//! declaration for the shim (`carve-shim`, which sits between a program and `libcuda.so.1`), the
//! stand-in driver (`carve-fake-cuda`) and the test workload (`carve-workload`), so that the
//! three cannot drift apart.
//!
//! Written from the values and prototypes NVIDIA documents for `cuda.h` (CUDA 12): C `int` and
//! `enum` are [`c_int`]/[`c_uint`], `size_t` is `usize`, `unsigned long long` is `u64`. Names keep
//! cuda.h's spelling so that they can be looked up there. Only what carve needs is declared; a
//! struct carve never looks inside ([`CUmemAllocationProp`], [`CUlaunchAttribute`]) is opaque.
//!
//! Declarations only: no functions are linked from here (the driver is found at run time).

#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::marker::{PhantomData, PhantomPinned};

// ---------------------------------------------------------------------------------------------
// Return codes.

/// `CUresult`: what every driver API function returns (`cudaError_enum`, an `int`).
pub type CUresult = c_int;

pub const CUDA_SUCCESS: CUresult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
pub const CUDA_ERROR_DEINITIALIZED: CUresult = 4;
pub const CUDA_ERROR_NO_DEVICE: CUresult = 100;
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
pub const CUDA_ERROR_INVALID_IMAGE: CUresult = 200;
pub const CUDA_ERROR_INVALID_CONTEXT: CUresult = 201;
pub const CUDA_ERROR_INVALID_PTX: CUresult = 218;
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
pub const CUDA_ERROR_NOT_READY: CUresult = 600;
pub const CUDA_ERROR_ILLEGAL_ADDRESS: CUresult = 700;
pub const CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: CUresult = 701;
pub const CUDA_ERROR_LAUNCH_FAILED: CUresult = 719;
pub const CUDA_ERROR_NOT_PERMITTED: CUresult = 800;
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;
pub const CUDA_ERROR_UNKNOWN: CUresult = 999;

// ---------------------------------------------------------------------------------------------
// Handles and scalar types.

/// A C struct whose fields carve never touches: only pointers to it exist.
macro_rules! opaque_struct {
    ($(#[$doc:meta])* $st:ident) => {
        $(#[$doc])*
        #[repr(C)]
        pub struct $st {
            _opaque: [u8; 0],
            _not_send_sync_or_unpin: PhantomData<(*mut u8, PhantomPinned)>,
        }
    };
}

/// Handles: pointers to the driver's private objects, never dereferenced outside the driver.
macro_rules! opaque {
    ($($(#[$doc:meta])* $st:ident => $handle:ident;)*) => {$(
        opaque_struct!(
            /// The driver's private object behind a handle.
            $st
        );
        $(#[$doc])*
        pub type $handle = *mut $st;
    )*};
}

opaque! {
    /// `CUcontext`: a context (`struct CUctx_st *`).
    CUctx_st => CUcontext;
    /// `CUstream`: a stream (`struct CUstream_st *`); null is the default stream.
    CUstream_st => CUstream;
    /// `CUevent`: an event (`struct CUevent_st *`).
    CUevent_st => CUevent;
    /// `CUmodule`: a loaded module (`struct CUmod_st *`).
    CUmod_st => CUmodule;
    /// `CUfunction`: a kernel of a module (`struct CUfunc_st *`).
    CUfunc_st => CUfunction;
    /// `CUarray`: a CUDA array (`struct CUarray_st *`).
    CUarray_st => CUarray;
    /// `CUgraphExec`: an executable graph (`struct CUgraphExec_st *`).
    CUgraphExec_st => CUgraphExec;
    /// `CUgraph`: a graph being built (`struct CUgraph_st *`).
    CUgraph_st => CUgraph;
    /// `CUgraphNode`: a node of a graph (`struct CUgraphNode_st *`).
    CUgraphNode_st => CUgraphNode;
    /// `CUmemoryPool`: a memory pool (`struct CUmemPoolHandle_st *`).
    CUmemPoolHandle_st => CUmemoryPool;
    /// `CUmipmappedArray`: a mipmapped array (`struct CUmipmappedArray_st *`).
    CUmipmappedArray_st => CUmipmappedArray;
}

opaque_struct!(
    /// `CUmemAllocationProp`: the properties of a `cuMemCreate` allocation (opaque here: carve
    /// only passes it on or checks it is given).
    CUmemAllocationProp
);
opaque_struct!(
    /// `CUlaunchAttribute`: one attribute of a `cuLaunchKernelEx` launch (opaque here).
    CUlaunchAttribute
);
opaque_struct!(
    /// `CUmemAccessDesc`: who may access a mapping (opaque here).
    CUmemAccessDesc
);
opaque_struct!(
    /// `CUgraphEdgeData`: the data of a graph edge (`cuGraphAddNode_v2`; opaque here).
    CUgraphEdgeData
);

/// `CUdevice`: a device ordinal (`int`).
pub type CUdevice = c_int;
/// `CUdevice_attribute` (an enum).
pub type CUdevice_attribute = c_int;
/// `CUdeviceptr`: a device address (`unsigned long long` on 64-bit hosts).
pub type CUdeviceptr = u64;
/// `CUdeviceptr_v1`: the 32-bit device address of the API before CUDA 3.2 (`unsigned int`),
/// taken by the unversioned names (`cuMemAlloc`, ...) the driver still exports.
pub type CUdeviceptr_v1 = c_uint;
/// `CUmemGenericAllocationHandle`: what `cuMemCreate` returns (`unsigned long long`).
pub type CUmemGenericAllocationHandle = u64;
/// `CUarray_format` (an enum): the element type of a CUDA array.
pub type CUarray_format = c_uint;
/// `CUdriverProcAddressQueryResult` (an enum): how `cuGetProcAddress_v2` found a symbol.
pub type CUdriverProcAddressQueryResult = c_int;

pub const CU_GET_PROC_ADDRESS_SUCCESS: CUdriverProcAddressQueryResult = 0;
pub const CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND: CUdriverProcAddressQueryResult = 1;
pub const CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT: CUdriverProcAddressQueryResult = 2;

/// `cuGetProcAddress` flags: no stream-semantics override (the default).
pub const CU_GET_PROC_ADDRESS_DEFAULT: u64 = 0;
/// `cuGetProcAddress` flags: the legacy default stream's variant of a function.
pub const CU_GET_PROC_ADDRESS_LEGACY_STREAM: u64 = 1;
/// `cuGetProcAddress` flags: the per-thread default stream's variant (`_ptsz`/`_ptds`).
pub const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// `CUstreamCaptureStatus` (an enum): whether a stream is being captured into a graph.
pub type CUstreamCaptureStatus = c_int;
pub const CU_STREAM_CAPTURE_STATUS_NONE: CUstreamCaptureStatus = 0;
pub const CU_STREAM_CAPTURE_STATUS_ACTIVE: CUstreamCaptureStatus = 1;
pub const CU_STREAM_CAPTURE_STATUS_INVALIDATED: CUstreamCaptureStatus = 2;
/// `CUstreamCaptureMode` (an enum).
pub type CUstreamCaptureMode = c_int;
pub const CU_STREAM_CAPTURE_MODE_GLOBAL: CUstreamCaptureMode = 0;

/// `CUgraphNodeType` (an enum): what a graph node does.
pub type CUgraphNodeType = c_int;
pub const CU_GRAPH_NODE_TYPE_KERNEL: CUgraphNodeType = 0;
/// A node that allocates device memory each time its graph runs.
pub const CU_GRAPH_NODE_TYPE_MEM_ALLOC: CUgraphNodeType = 10;

/// CUDA 12.0 in the driver's version encoding (1000 × major + 10 × minor): the version carve
/// asks `cuGetProcAddress` for (the `_v2` memory functions), and the first in which the name
/// `cuGetProcAddress` itself resolves to `cuGetProcAddress_v2`.
pub const CUDA_VERSION_12_0: c_int = 12000;

// ---------------------------------------------------------------------------------------------
// Structs.

pub const CU_AD_FORMAT_UNSIGNED_INT8: CUarray_format = 0x01;
pub const CU_AD_FORMAT_UNSIGNED_INT16: CUarray_format = 0x02;
pub const CU_AD_FORMAT_UNSIGNED_INT32: CUarray_format = 0x03;
pub const CU_AD_FORMAT_SIGNED_INT8: CUarray_format = 0x08;
pub const CU_AD_FORMAT_SIGNED_INT16: CUarray_format = 0x09;
pub const CU_AD_FORMAT_SIGNED_INT32: CUarray_format = 0x0a;
pub const CU_AD_FORMAT_HALF: CUarray_format = 0x10;
pub const CU_AD_FORMAT_FLOAT: CUarray_format = 0x20;

/// Bytes per channel of an element of the classic array formats (8-, 16- and 32-bit integers,
/// half and float); `None` for the others.
pub const fn array_format_bytes(format: CUarray_format) -> Option<u64> {
    match format {
        CU_AD_FORMAT_UNSIGNED_INT8 | CU_AD_FORMAT_SIGNED_INT8 => Some(1),
        CU_AD_FORMAT_UNSIGNED_INT16 | CU_AD_FORMAT_SIGNED_INT16 | CU_AD_FORMAT_HALF => Some(2),
        CU_AD_FORMAT_UNSIGNED_INT32 | CU_AD_FORMAT_SIGNED_INT32 | CU_AD_FORMAT_FLOAT => Some(4),
        _ => None,
    }
}

/// `CUDA_ARRAY_DESCRIPTOR`: what `cuArrayCreate` makes. `Height` 0 is a one-dimensional array.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CUDA_ARRAY_DESCRIPTOR {
    pub Width: usize,
    pub Height: usize,
    pub Format: CUarray_format,
    pub NumChannels: c_uint,
}

/// `CUDA_ARRAY3D_DESCRIPTOR`: what `cuArray3DCreate` and `cuMipmappedArrayCreate` make. `Height`
/// 0 is one-dimensional, `Depth` 0 two-dimensional; a layered or cubemap array's layers are its
/// `Depth`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CUDA_ARRAY3D_DESCRIPTOR {
    pub Width: usize,
    pub Height: usize,
    pub Depth: usize,
    pub Format: CUarray_format,
    pub NumChannels: c_uint,
    pub Flags: c_uint,
}

/// `CUDA_ARRAY_DESCRIPTOR_v1`: the pre-3.2 descriptor of the unversioned `cuArrayCreate`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CUDA_ARRAY_DESCRIPTOR_v1 {
    pub Width: c_uint,
    pub Height: c_uint,
    pub Format: CUarray_format,
    pub NumChannels: c_uint,
}

/// `CUDA_ARRAY3D_DESCRIPTOR_v1`: the pre-3.2 descriptor of the unversioned `cuArray3DCreate`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CUDA_ARRAY3D_DESCRIPTOR_v1 {
    pub Width: c_uint,
    pub Height: c_uint,
    pub Depth: c_uint,
    pub Format: CUarray_format,
    pub NumChannels: c_uint,
    pub Flags: c_uint,
}

/// `CUDA_LAUNCH_PARAMS`: one device's launch of `cuLaunchCooperativeKernelMultiDevice`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUDA_LAUNCH_PARAMS {
    pub function: CUfunction,
    pub gridDimX: c_uint,
    pub gridDimY: c_uint,
    pub gridDimZ: c_uint,
    pub blockDimX: c_uint,
    pub blockDimY: c_uint,
    pub blockDimZ: c_uint,
    pub sharedMemBytes: c_uint,
    pub hStream: CUstream,
    pub kernelParams: VoidPtrPtr,
}

/// `CUmemLocation`: where memory is (type and id).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CUmemLocation {
    pub type_: c_int,
    pub id: c_int,
}

/// `CUmemPoolProps`: the properties of a memory pool.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemPoolProps {
    pub allocType: c_int,
    pub handleTypes: c_int,
    pub location: CUmemLocation,
    pub win32SecurityAttributes: *mut c_void,
    pub maxSize: usize,
    pub usage: u16,
    pub reserved: [u8; 54],
}

/// `CUDA_MEM_ALLOC_NODE_PARAMS` (and `_v2`, the same layout): a graph node that allocates
/// `bytesize` bytes each time its graph runs; the driver writes the address to `dptr`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUDA_MEM_ALLOC_NODE_PARAMS {
    pub poolProps: CUmemPoolProps,
    pub accessDescs: *const CUmemAccessDesc,
    pub accessDescCount: usize,
    pub bytesize: usize,
    pub dptr: CUdeviceptr,
}

/// The parameters of one node of any type (`CUgraphNodeParams`, CUDA 12.2): the type first,
/// then the type's parameters in a union of 232 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUgraphNodeParams {
    pub type_: CUgraphNodeType,
    pub reserved0: [c_int; 3],
    pub params: CUgraphNodeParamsUnion,
    pub reserved2: i64,
}

/// The union of `CUgraphNodeParams` (only the member carve reads is declared).
#[repr(C)]
#[derive(Clone, Copy)]
pub union CUgraphNodeParamsUnion {
    pub reserved1: [i64; 29],
    pub alloc: CUDA_MEM_ALLOC_NODE_PARAMS,
}

/// `CUlaunchConfig`: the launch of `cuLaunchKernelEx`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUlaunchConfig {
    pub gridDimX: c_uint,
    pub gridDimY: c_uint,
    pub gridDimZ: c_uint,
    pub blockDimX: c_uint,
    pub blockDimY: c_uint,
    pub blockDimZ: c_uint,
    pub sharedMemBytes: c_uint,
    pub hStream: CUstream,
    /// `numAttrs` attributes (may be null when there are none).
    pub attrs: *mut CUlaunchAttribute,
    pub numAttrs: c_uint,
}

// ---------------------------------------------------------------------------------------------
// Entry points: `PFN_<name>` is the type of the function `<name>` (cuda.h's prototypes; the
// `_v2` names are the ones the driver exports for the unversioned API names).

/// `void **`: kernel parameters, `extra` options, and `cuGetProcAddress`'s result.
pub type VoidPtrPtr = *mut *mut c_void;

pub type PFN_cuInit = unsafe extern "C" fn(Flags: c_uint) -> CUresult;
pub type PFN_cuDriverGetVersion = unsafe extern "C" fn(driverVersion: *mut c_int) -> CUresult;
pub type PFN_cuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> CUresult;
pub type PFN_cuDeviceGet = unsafe extern "C" fn(device: *mut CUdevice, ordinal: c_int) -> CUresult;
pub type PFN_cuDeviceGetName =
    unsafe extern "C" fn(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult;
pub type PFN_cuDeviceTotalMem_v2 =
    unsafe extern "C" fn(bytes: *mut usize, dev: CUdevice) -> CUresult;
pub type PFN_cuDeviceGetAttribute =
    unsafe extern "C" fn(pi: *mut c_int, attrib: CUdevice_attribute, dev: CUdevice) -> CUresult;

pub type PFN_cuDevicePrimaryCtxRetain =
    unsafe extern "C" fn(pctx: *mut CUcontext, dev: CUdevice) -> CUresult;
/// Also the type of the pre-11.0 `cuDevicePrimaryCtxRelease`.
pub type PFN_cuDevicePrimaryCtxRelease_v2 = unsafe extern "C" fn(dev: CUdevice) -> CUresult;
pub type PFN_cuCtxCreate_v2 =
    unsafe extern "C" fn(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult;
pub type PFN_cuCtxDestroy_v2 = unsafe extern "C" fn(ctx: CUcontext) -> CUresult;
pub type PFN_cuCtxSetCurrent = unsafe extern "C" fn(ctx: CUcontext) -> CUresult;
pub type PFN_cuCtxGetCurrent = unsafe extern "C" fn(pctx: *mut CUcontext) -> CUresult;
pub type PFN_cuCtxSynchronize = unsafe extern "C" fn() -> CUresult;

pub type PFN_cuStreamCreate =
    unsafe extern "C" fn(phStream: *mut CUstream, Flags: c_uint) -> CUresult;
pub type PFN_cuStreamDestroy_v2 = unsafe extern "C" fn(hStream: CUstream) -> CUresult;
pub type PFN_cuStreamSynchronize = unsafe extern "C" fn(hStream: CUstream) -> CUresult;
pub type PFN_cuStreamQuery = unsafe extern "C" fn(hStream: CUstream) -> CUresult;

pub type PFN_cuEventCreate = unsafe extern "C" fn(phEvent: *mut CUevent, Flags: c_uint) -> CUresult;
pub type PFN_cuEventRecord = unsafe extern "C" fn(hEvent: CUevent, hStream: CUstream) -> CUresult;
pub type PFN_cuEventQuery = unsafe extern "C" fn(hEvent: CUevent) -> CUresult;
pub type PFN_cuEventSynchronize = unsafe extern "C" fn(hEvent: CUevent) -> CUresult;
pub type PFN_cuEventElapsedTime =
    unsafe extern "C" fn(pMilliseconds: *mut f32, hStart: CUevent, hEnd: CUevent) -> CUresult;
pub type PFN_cuEventDestroy_v2 = unsafe extern "C" fn(hEvent: CUevent) -> CUresult;

pub type PFN_cuMemAlloc_v2 =
    unsafe extern "C" fn(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult;
pub type PFN_cuMemAllocManaged =
    unsafe extern "C" fn(dptr: *mut CUdeviceptr, bytesize: usize, flags: c_uint) -> CUresult;
pub type PFN_cuMemAllocAsync =
    unsafe extern "C" fn(dptr: *mut CUdeviceptr, bytesize: usize, hStream: CUstream) -> CUresult;
pub type PFN_cuMemAllocPitch_v2 = unsafe extern "C" fn(
    dptr: *mut CUdeviceptr,
    pPitch: *mut usize,
    WidthInBytes: usize,
    Height: usize,
    ElementSizeBytes: c_uint,
) -> CUresult;
pub type PFN_cuMemFree_v2 = unsafe extern "C" fn(dptr: CUdeviceptr) -> CUresult;
pub type PFN_cuMemFreeAsync =
    unsafe extern "C" fn(dptr: CUdeviceptr, hStream: CUstream) -> CUresult;
pub type PFN_cuMemGetInfo_v2 =
    unsafe extern "C" fn(free: *mut usize, total: *mut usize) -> CUresult;
pub type PFN_cuMemCreate = unsafe extern "C" fn(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult;
pub type PFN_cuMemRelease = unsafe extern "C" fn(handle: CUmemGenericAllocationHandle) -> CUresult;
pub type PFN_cuMemAddressReserve = unsafe extern "C" fn(
    ptr: *mut CUdeviceptr,
    size: usize,
    alignment: usize,
    addr: CUdeviceptr,
    flags: u64,
) -> CUresult;
pub type PFN_cuMemAddressFree = unsafe extern "C" fn(ptr: CUdeviceptr, size: usize) -> CUresult;
pub type PFN_cuMemMap = unsafe extern "C" fn(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: CUmemGenericAllocationHandle,
    flags: u64,
) -> CUresult;
pub type PFN_cuMemUnmap = unsafe extern "C" fn(ptr: CUdeviceptr, size: usize) -> CUresult;
pub type PFN_cuMemRetainAllocationHandle =
    unsafe extern "C" fn(handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void) -> CUresult;
pub type PFN_cuDeviceGetDefaultMemPool =
    unsafe extern "C" fn(pool_out: *mut CUmemoryPool, dev: CUdevice) -> CUresult;
pub type PFN_cuMemAllocFromPoolAsync = unsafe extern "C" fn(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    pool: CUmemoryPool,
    hStream: CUstream,
) -> CUresult;
pub type PFN_cuArray3DCreate_v2 = unsafe extern "C" fn(
    pHandle: *mut CUarray,
    pAllocateArray: *const CUDA_ARRAY3D_DESCRIPTOR,
) -> CUresult;
pub type PFN_cuMipmappedArrayCreate = unsafe extern "C" fn(
    pHandle: *mut CUmipmappedArray,
    pMipmappedArrayDesc: *const CUDA_ARRAY3D_DESCRIPTOR,
    numMipmapLevels: c_uint,
) -> CUresult;
pub type PFN_cuMipmappedArrayDestroy =
    unsafe extern "C" fn(hMipmappedArray: CUmipmappedArray) -> CUresult;

// The unversioned names of the API before CUDA 3.2 (32-bit sizes and device addresses), which
// the driver still exports for old binaries.
pub type PFN_cuMemAlloc =
    unsafe extern "C" fn(dptr: *mut CUdeviceptr_v1, bytesize: c_uint) -> CUresult;
pub type PFN_cuMemAllocPitch = unsafe extern "C" fn(
    dptr: *mut CUdeviceptr_v1,
    pPitch: *mut c_uint,
    WidthInBytes: c_uint,
    Height: c_uint,
    ElementSizeBytes: c_uint,
) -> CUresult;
pub type PFN_cuArrayCreate = unsafe extern "C" fn(
    pHandle: *mut CUarray,
    pAllocateArray: *const CUDA_ARRAY_DESCRIPTOR_v1,
) -> CUresult;
pub type PFN_cuArray3DCreate = unsafe extern "C" fn(
    pHandle: *mut CUarray,
    pAllocateArray: *const CUDA_ARRAY3D_DESCRIPTOR_v1,
) -> CUresult;
pub type PFN_cuArrayCreate_v2 = unsafe extern "C" fn(
    pHandle: *mut CUarray,
    pAllocateArray: *const CUDA_ARRAY_DESCRIPTOR,
) -> CUresult;
pub type PFN_cuArrayDestroy = unsafe extern "C" fn(hArray: CUarray) -> CUresult;

pub type PFN_cuModuleLoadData =
    unsafe extern "C" fn(module: *mut CUmodule, image: *const c_void) -> CUresult;
pub type PFN_cuModuleUnload = unsafe extern "C" fn(hmod: CUmodule) -> CUresult;
pub type PFN_cuModuleGetFunction =
    unsafe extern "C" fn(hfunc: *mut CUfunction, hmod: CUmodule, name: *const c_char) -> CUresult;

pub type PFN_cuLaunchKernel = unsafe extern "C" fn(
    f: CUfunction,
    gridDimX: c_uint,
    gridDimY: c_uint,
    gridDimZ: c_uint,
    blockDimX: c_uint,
    blockDimY: c_uint,
    blockDimZ: c_uint,
    sharedMemBytes: c_uint,
    hStream: CUstream,
    kernelParams: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> CUresult;
pub type PFN_cuLaunchCooperativeKernel = unsafe extern "C" fn(
    f: CUfunction,
    gridDimX: c_uint,
    gridDimY: c_uint,
    gridDimZ: c_uint,
    blockDimX: c_uint,
    blockDimY: c_uint,
    blockDimZ: c_uint,
    sharedMemBytes: c_uint,
    hStream: CUstream,
    kernelParams: VoidPtrPtr,
) -> CUresult;
pub type PFN_cuLaunchKernelEx = unsafe extern "C" fn(
    config: *const CUlaunchConfig,
    f: CUfunction,
    kernelParams: VoidPtrPtr,
    extra: VoidPtrPtr,
) -> CUresult;
pub type PFN_cuGraphLaunch =
    unsafe extern "C" fn(hGraphExec: CUgraphExec, hStream: CUstream) -> CUresult;
pub type PFN_cuGraphExecDestroy = unsafe extern "C" fn(hGraphExec: CUgraphExec) -> CUresult;
pub type PFN_cuLaunchCooperativeKernelMultiDevice = unsafe extern "C" fn(
    launchParamsList: *mut CUDA_LAUNCH_PARAMS,
    numDevices: c_uint,
    flags: c_uint,
) -> CUresult;
/// The launches of the API before CUDA 4.0 (parameters set beforehand with `cuParamSet*`).
pub type PFN_cuLaunch = unsafe extern "C" fn(f: CUfunction) -> CUresult;
pub type PFN_cuLaunchGrid =
    unsafe extern "C" fn(f: CUfunction, grid_width: c_int, grid_height: c_int) -> CUresult;
pub type PFN_cuLaunchGridAsync = unsafe extern "C" fn(
    f: CUfunction,
    grid_width: c_int,
    grid_height: c_int,
    hStream: CUstream,
) -> CUresult;

pub type PFN_cuGraphCreate = unsafe extern "C" fn(phGraph: *mut CUgraph, flags: c_uint) -> CUresult;
pub type PFN_cuGraphDestroy = unsafe extern "C" fn(hGraph: CUgraph) -> CUresult;
pub type PFN_cuGraphAddMemAllocNode = unsafe extern "C" fn(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    numDependencies: usize,
    nodeParams: *mut CUDA_MEM_ALLOC_NODE_PARAMS,
) -> CUresult;
pub type PFN_cuGraphAddNode = unsafe extern "C" fn(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    numDependencies: usize,
    nodeParams: *mut CUgraphNodeParams,
) -> CUresult;
pub type PFN_cuGraphAddNode_v2 = unsafe extern "C" fn(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    dependencyData: *const CUgraphEdgeData,
    numDependencies: usize,
    nodeParams: *mut CUgraphNodeParams,
) -> CUresult;
pub type PFN_cuStreamBeginCapture_v2 =
    unsafe extern "C" fn(hStream: CUstream, mode: CUstreamCaptureMode) -> CUresult;
pub type PFN_cuStreamEndCapture =
    unsafe extern "C" fn(hStream: CUstream, phGraph: *mut CUgraph) -> CUresult;
pub type PFN_cuStreamIsCapturing =
    unsafe extern "C" fn(hStream: CUstream, captureStatus: *mut CUstreamCaptureStatus) -> CUresult;

// The per-thread-default-stream variants (`_ptsz`, `_ptds`): the same prototypes as the plain
// names; a null stream is the calling thread's default stream instead of the legacy one.
pub type PFN_cuLaunchKernel_ptsz = PFN_cuLaunchKernel;
pub type PFN_cuLaunchKernelEx_ptsz = PFN_cuLaunchKernelEx;
pub type PFN_cuLaunchCooperativeKernel_ptsz = PFN_cuLaunchCooperativeKernel;
pub type PFN_cuGraphLaunch_ptsz = PFN_cuGraphLaunch;
pub type PFN_cuMemAllocAsync_ptsz = PFN_cuMemAllocAsync;
pub type PFN_cuMemAllocFromPoolAsync_ptsz = PFN_cuMemAllocFromPoolAsync;
pub type PFN_cuMemFreeAsync_ptsz = PFN_cuMemFreeAsync;
pub type PFN_cuStreamSynchronize_ptsz = PFN_cuStreamSynchronize;
pub type PFN_cuStreamIsCapturing_ptsz = PFN_cuStreamIsCapturing;

/// `cuGetErrorName` and `cuGetErrorString`: a static string, or null for an unknown code.
pub type PFN_cuGetErrorName =
    unsafe extern "C" fn(error: CUresult, pStr: *mut *const c_char) -> CUresult;
pub type PFN_cuGetErrorString = PFN_cuGetErrorName;

/// `cuGetProcAddress` as CUDA 11.3–11.8 declare it (still exported under that name).
pub type PFN_cuGetProcAddress = unsafe extern "C" fn(
    symbol: *const c_char,
    pfn: VoidPtrPtr,
    cudaVersion: c_int,
    flags: u64,
) -> CUresult;
/// `cuGetProcAddress_v2` (CUDA 12.0+: `cuGetProcAddress` in cuda.h).
pub type PFN_cuGetProcAddress_v2 = unsafe extern "C" fn(
    symbol: *const c_char,
    pfn: VoidPtrPtr,
    cudaVersion: c_int,
    flags: u64,
    symbolStatus: *mut CUdriverProcAddressQueryResult,
) -> CUresult;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_cudas() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<CUDA_ARRAY_DESCRIPTOR>(), 24);
        assert_eq!(offset_of!(CUDA_ARRAY_DESCRIPTOR, Format), 16);
        assert_eq!(offset_of!(CUlaunchConfig, hStream), 32);
        assert_eq!(offset_of!(CUlaunchConfig, numAttrs), 48);
        assert_eq!(size_of::<CUlaunchConfig>(), 56);
        assert_eq!(size_of::<CUDA_ARRAY3D_DESCRIPTOR>(), 40);
        assert_eq!(offset_of!(CUDA_ARRAY3D_DESCRIPTOR, Flags), 32);
        assert_eq!(size_of::<CUDA_ARRAY3D_DESCRIPTOR_v1>(), 24);
        assert_eq!(offset_of!(CUDA_LAUNCH_PARAMS, hStream), 40);
        assert_eq!(size_of::<CUDA_LAUNCH_PARAMS>(), 56);
        assert_eq!(size_of::<CUmemPoolProps>(), 88);
        assert_eq!(offset_of!(CUDA_MEM_ALLOC_NODE_PARAMS, bytesize), 104);
        assert_eq!(size_of::<CUDA_MEM_ALLOC_NODE_PARAMS>(), 120);
        assert_eq!(offset_of!(CUgraphNodeParams, params), 16);
        assert_eq!(size_of::<CUgraphNodeParams>(), 256);
        assert_eq!(size_of::<CUcontext>(), size_of::<*mut c_void>());
        assert_eq!(
            size_of::<Option<PFN_cuLaunchKernel>>(),
            size_of::<*mut c_void>()
        );
    }

    #[test]
    fn array_formats() {
        assert_eq!(array_format_bytes(CU_AD_FORMAT_SIGNED_INT8), Some(1));
        assert_eq!(array_format_bytes(CU_AD_FORMAT_HALF), Some(2));
        assert_eq!(array_format_bytes(CU_AD_FORMAT_FLOAT), Some(4));
        assert_eq!(array_format_bytes(0x7f), None);
    }
}
