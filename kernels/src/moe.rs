//! The mixture-of-experts launchers: an expert's rows gathered from the batch, and its weighted output added back
//! into their rows of the residual stream. Routing (which rows go to which expert, with what weight) is the
//! host's; these kernels take its index and weight lists, already on the device.

use cudarc::driver::{CudaSlice, CudaStream, CudaView, PushKernelArg};
use half::bf16;

use crate::{KernelError, Kernels, check, int, rows};

impl Kernels {
    /// `out[i] = src[idx[i]]` for the `idx.len()` rows of `cols` an expert takes.
    pub fn gather_rows(
        &self,
        stream: &CudaStream,
        src: &CudaSlice<bf16>,
        src_rows: usize,
        idx: &CudaView<'_, i32>,
        out: &mut CudaSlice<bf16>,
        cols: usize,
    ) -> Result<(), KernelError> {
        let n = idx.len();
        check("gather_rows", "src", src.len(), src_rows * cols)?;
        check("gather_rows", "out", out.len(), n * cols)?;
        if n == 0 {
            return Ok(());
        }
        let cols_i = int(cols);
        let mut launch = stream.launch_builder(&self.gather_rows_bf16);
        launch.arg(src).arg(idx).arg(out).arg(&cols_i);
        // SAFETY: block i reads row idx[i] of src — the caller's routing names rows below `src_rows`, which the
        // buffer holds (checked) — and writes row i of out (checked).
        unsafe { launch.launch(rows(n)) }?;
        Ok(())
    }

    /// `x[idx[i]] += weight[i] · src[i]` for the `idx.len()` output rows of `cols` of one expert; `idx` names
    /// distinct rows below `x_rows`.
    pub fn scatter_add_rows(
        &self,
        stream: &CudaStream,
        src: &CudaSlice<f32>,
        idx: &CudaView<'_, i32>,
        weight: &CudaView<'_, f32>,
        x: &mut CudaSlice<f32>,
        x_rows: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        let n = idx.len();
        check("scatter_add_rows", "src", src.len(), n * cols)?;
        check("scatter_add_rows", "weight", weight.len(), n)?;
        check("scatter_add_rows", "x", x.len(), x_rows * cols)?;
        if n == 0 {
            return Ok(());
        }
        let cols_i = int(cols);
        let mut launch = stream.launch_builder(&self.scatter_add_rows);
        launch.arg(src).arg(idx).arg(weight).arg(x).arg(&cols_i);
        // SAFETY: block i reads row i of src and weight[i] (checked) and adds into row idx[i] of x, below `x_rows`
        // (the caller's routing), which x holds (checked); distinct rows, so blocks never write the same element.
        unsafe { launch.launch(rows(n)) }?;
        Ok(())
    }
}
