//! The C ABI against the Rust API: weights set in every format come back unchanged, and
//! forward inference, forward training and backward through the ABI are bitwise identical to
//! the sequence engine called from Rust; bad arguments of every kind give the documented
//! status and a message; many threads sharing one descriptor get what one thread gets.

use std::ffi::CStr;
use std::ptr;

use fused_rnn::Real;
use fused_rnn::capi::*;
use fused_rnn::cell::Recurrent;
use fused_rnn::layout::LayoutKind;
use fused_rnn::prelude::*;

fn t<T>(v: &[T]) -> FrnnTensor {
    FrnnTensor {
        data: v.as_ptr().cast(),
        len: v.len(),
    }
}
fn tm<T>(v: &mut [T]) -> FrnnTensorMut {
    FrnnTensorMut {
        data: v.as_mut_ptr().cast(),
        len: v.len(),
    }
}
const NONE: FrnnTensor = FrnnTensor {
    data: ptr::null(),
    len: 0,
};
const NONE_MUT: FrnnTensorMut = FrnnTensorMut {
    data: ptr::null_mut(),
    len: 0,
};

fn last_error() -> String {
    // SAFETY: the library returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(frnn_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts `status` and that the message mentions `needle`.
#[track_caller]
fn expect_err(status: FrnnStatus, want: FrnnStatus, needle: &str) {
    assert_eq!(status, want, "message: {}", last_error());
    let msg = last_error();
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

/// An owned descriptor.
struct Desc(*mut FrnnRnnDesc);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by frnn_rnn_desc_create, destroyed once.
        unsafe { frnn_rnn_desc_destroy(self.0) };
    }
}
impl Desc {
    fn ptr(&self) -> *const FrnnRnnDesc {
        self.0
    }
}
// SAFETY: the descriptor is immutable and documented as shareable between threads.
unsafe impl Send for Desc {}
// SAFETY: as above.
unsafe impl Sync for Desc {}

fn config(cell: FrnnCell, dtype: FrnnDtype, i: usize, h: usize) -> FrnnRnnConfig {
    let mut c = std::mem::MaybeUninit::<FrnnRnnConfig>::uninit();
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { frnn_rnn_config_init(c.as_mut_ptr(), cell as u32) },
        FrnnStatus::Ok
    );
    // SAFETY: initialised by the call above.
    let mut c = unsafe { c.assume_init() };
    c.dtype = dtype as u32;
    c.input_size = i;
    c.hidden_size = h;
    c
}

fn create(c: &FrnnRnnConfig) -> Result<Desc, FrnnStatus> {
    let mut d = ptr::null_mut();
    // SAFETY: valid pointers.
    match unsafe { frnn_rnn_desc_create(c, &mut d) } {
        FrnnStatus::Ok => Ok(Desc(d)),
        s => Err(s),
    }
}

fn sizes(d: &Desc, s: &FrnnSeqConfig) -> FrnnSizes {
    let mut out = FrnnSizes::default();
    // SAFETY: valid pointers.
    let st = unsafe { frnn_get_sizes(d.ptr(), s, &mut out) };
    assert_eq!(st, FrnnStatus::Ok, "{}", last_error());
    out
}

fn seq_config(spec: &SeqSpec) -> FrnnSeqConfig {
    FrnnSeqConfig {
        time_steps: spec.time_steps,
        batch: spec.batch,
        layout: match spec.layout {
            Layout::TimeMajor => FrnnLayout::TimeMajor as u32,
            Layout::BatchMajor => FrnnLayout::BatchMajor as u32,
        },
        go_backwards: spec.go_backwards as u32,
        return_sequences: spec.return_sequences as u32,
        threads: spec.threads,
    }
}

fn bits<T: Real>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

fn values<T: Real>(n: usize, seed: usize) -> Vec<T> {
    (0..n)
        .map(|k| T::from_f64((((k * 7919 + seed * 104_729) % 2001) as f64 - 1000.0) / 1100.0))
        .collect()
}

/// Tensors of one framework as [`FrnnWeightTensors`] (borrowing `v`).
fn tensors<T>(v: &[Option<Vec<T>>; 4]) -> FrnnWeightTensors {
    let f = |x: &Option<Vec<T>>| x.as_deref().map_or(NONE, t);
    FrnnWeightTensors {
        input_weights: f(&v[0]),
        recurrent_weights: f(&v[1]),
        input_bias: f(&v[2]),
        recurrent_bias: f(&v[3]),
    }
}

/// The cell's weights in `format`, as the four C tensors.
fn framework_tensors<T: Real, K: LayoutKind>(
    cell: &Recurrent<T, K, Dyn, Dyn>,
    format: FrnnWeightFormat,
) -> Option<[Option<Vec<T>>; 4]> {
    Some(match format {
        FrnnWeightFormat::Internal => {
            let w = cell.weights();
            [
                Some(w.kernel().to_vec()),
                Some(w.recurrent_kernel().to_vec()),
                w.bias().map(<[T]>::to_vec),
                w.recurrent_bias().map(<[T]>::to_vec),
            ]
        }
        FrnnWeightFormat::Keras => {
            let k = cell.to_keras();
            [Some(k.kernel), Some(k.recurrent_kernel), k.bias, None]
        }
        FrnnWeightFormat::Torch => {
            let k = cell.to_torch().ok()?;
            [Some(k.weight_ih), Some(k.weight_hh), k.bias_ih, k.bias_hh]
        }
        FrnnWeightFormat::Onnx => {
            let k = cell.to_onnx();
            [Some(k.w), Some(k.r), k.b, None]
        }
    })
}

const FORMATS: [FrnnWeightFormat; 4] = [
    FrnnWeightFormat::Internal,
    FrnnWeightFormat::Keras,
    FrnnWeightFormat::Torch,
    FrnnWeightFormat::Onnx,
];

/// Sets the weights of `cell` through the ABI in every format; each gives the same weight
/// space, and reads back unchanged. Returns the weight space.
fn set_and_get<T: Real, K: LayoutKind>(d: &Desc, cell: &Recurrent<T, K, Dyn, Dyn>) -> Vec<T> {
    let mut n = 0;
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { frnn_get_weight_space_size(d.ptr(), &mut n) },
        FrnnStatus::Ok
    );
    let mut first: Option<Vec<T>> = None;
    for format in FORMATS {
        let Some(src) = framework_tensors(cell, format) else {
            // PyTorch has no reset-before GRU: the ABI says so.
            let mut ws = vec![T::ZERO; n];
            let src = framework_tensors(cell, FrnnWeightFormat::Internal).unwrap();
            // SAFETY: valid pointers and lengths.
            let st = unsafe {
                frnn_set_weights(d.ptr(), format as u32, 0, 0, &tensors(&src), tm(&mut ws))
            };
            expect_err(st, FrnnStatus::BadValue, "reset_after");
            continue;
        };
        let mut lens = [0usize; 4];
        // SAFETY: valid pointers.
        let st =
            unsafe { frnn_get_weight_tensor_lens(d.ptr(), format as u32, 0, lens.as_mut_ptr()) };
        assert_eq!(st, FrnnStatus::Ok);
        let given: Vec<usize> = src.iter().map(|v| v.as_ref().map_or(0, Vec::len)).collect();
        assert_eq!(given, lens, "{format:?} tensor lengths");
        let mut ws = vec![T::from_f64(9.0); n];
        // SAFETY: valid pointers and lengths.
        let st =
            unsafe { frnn_set_weights(d.ptr(), format as u32, 0, 0, &tensors(&src), tm(&mut ws)) };
        assert_eq!(st, FrnnStatus::Ok, "{format:?}: {}", last_error());
        // Keras's single bias loads as (bias + recurrent_bias, 0): the same cell in another
        // weight space. Every other format gives exactly the internal weight space.
        let keras_sum = format == FrnnWeightFormat::Keras
            && cell.kind().keras_bias_rows() == 1
            && cell.weights().has_bias();
        match &first {
            None => first = Some(ws.clone()),
            Some(f) if !keras_sum => assert_eq!(bits(&ws), bits(f), "{format:?} weight space"),
            Some(_) => {}
        }
        let mut back: [Vec<T>; 4] = lens.map(|l| vec![T::ZERO; l]);
        let [a, b, c, e] = &mut back;
        let dst = FrnnWeightTensorsMut {
            input_weights: tm(a),
            recurrent_weights: tm(b),
            input_bias: if c.is_empty() { NONE_MUT } else { tm(c) },
            recurrent_bias: if e.is_empty() { NONE_MUT } else { tm(e) },
        };
        // SAFETY: valid pointers and lengths.
        let st = unsafe { frnn_get_weights(d.ptr(), format as u32, 0, 0, t(&ws), &dst) };
        assert_eq!(st, FrnnStatus::Ok, "{format:?}: {}", last_error());
        for (k, v) in back.iter().enumerate() {
            assert_eq!(
                bits(v),
                bits(src[k].as_deref().unwrap_or(&[])),
                "{format:?} tensor {k} round trip"
            );
        }
    }
    first.unwrap()
}

/// Forward inference, forward training and backward through the ABI against the Rust engine.
fn abi_matches_rust<T: Real, K: LayoutKind>(
    name: &str,
    d: &Desc,
    cell: &Recurrent<T, K, Dyn, Dyn>,
    spec: &SeqSpec,
    with_state: bool,
) {
    let ws = set_and_get(d, cell);
    let sc = seq_config(spec);
    let n = sizes(d, &sc);
    assert_eq!(
        n.reserve,
        seq::tape_len(cell, spec).unwrap(),
        "{name}: reserve"
    );
    assert_eq!(n.weight_space, ws.len());
    let x = values::<T>(n.x, 1);
    let hx = values::<T>(n.state, 2);
    let hx_opt = with_state.then_some(&hx[..]);
    let hx_t = if with_state { t(&hx) } else { NONE };

    let want = seq::forward(cell, spec, &x, hx_opt).unwrap();
    let (mut y, mut hy) = (vec![T::ZERO; n.y], vec![T::ZERO; n.state]);
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_forward_inference(
            d.ptr(),
            &sc,
            t(&ws),
            t(&x),
            hx_t,
            tm(&mut y),
            tm(&mut hy),
            NONE_MUT,
        )
    };
    assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
    assert_eq!(bits(&y), bits(&want.y), "{name}: y");
    assert_eq!(bits(&hy), bits(&want.final_state), "{name}: hy");

    let mut tape = vec![T::ZERO; n.reserve];
    seq::forward_train(cell, spec, &x, hx_opt, &mut tape).unwrap();
    // A reserve longer than needed is fine.
    let mut reserve = vec![T::ZERO; n.reserve + 3];
    let mut y2 = vec![T::ZERO; n.y];
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_forward_training(
            d.0,
            &sc,
            t(&ws),
            t(&x),
            hx_t,
            tm(&mut y2),
            NONE_MUT,
            NONE_MUT,
            tm(&mut reserve),
        )
    };
    assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
    assert_eq!(bits(&y2), bits(&want.y), "{name}: training y");
    assert_eq!(bits(&reserve[..n.reserve]), bits(&tape), "{name}: reserve");

    let dy = values::<T>(n.y, 3);
    let dhy = values::<T>(n.state, 4);
    let grads = seq::bptt(cell, spec, &x, hx_opt, &tape, &dy, Some(&dhy)).unwrap();
    let want_dw: Vec<T> = grads.params.concat();
    let (mut dx, mut dhx, mut dw) = (
        vec![T::ZERO; n.x],
        vec![T::ZERO; n.state],
        vec![T::from_f64(5.0); n.weight_space],
    );
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_backward(
            d.0,
            &sc,
            t(&ws),
            t(&x),
            hx_t,
            t(&reserve),
            t(&dy),
            t(&dhy),
            tm(&mut dx),
            tm(&mut dhx),
            tm(&mut dw),
            FrnnGradMode::Overwrite as u32,
            NONE_MUT,
        )
    };
    assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
    assert_eq!(bits(&dx), bits(&grads.dx), "{name}: dx");
    assert_eq!(bits(&dhx), bits(&grads.d_initial_state), "{name}: dhx");
    assert_eq!(bits(&dw), bits(&want_dw), "{name}: dw");

    // The split calls give the same numbers.
    let (mut dx2, mut dhx2) = (vec![T::ZERO; n.x], vec![T::ZERO; n.state]);
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_backward_data(
            d.0,
            &sc,
            t(&ws),
            t(&x),
            hx_t,
            t(&reserve),
            t(&dy),
            t(&dhy),
            tm(&mut dx2),
            tm(&mut dhx2),
            NONE_MUT,
        )
    };
    assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
    assert_eq!(bits(&dx2), bits(&dx), "{name}: backward_data dx");
    assert_eq!(bits(&dhx2), bits(&dhx), "{name}: backward_data dhx");

    // Accumulation adds to what `dw` holds, as the Rust API's GradMode::Accumulate does.
    let start = values::<T>(n.weight_space, 5);
    let mut acc = start.clone();
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_backward_weights(
            d.0,
            &sc,
            t(&ws),
            t(&x),
            hx_t,
            t(&reserve),
            t(&dy),
            t(&dhy),
            tm(&mut acc),
            FrnnGradMode::Accumulate as u32,
            NONE_MUT,
        )
    };
    assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
    let mut g = Gradients::zeros(cell, spec).unwrap();
    let mut at = 0;
    for p in &mut g.params {
        let len = p.len();
        p.copy_from_slice(&start[at..at + len]);
        at += len;
    }
    seq::bptt_into(
        cell,
        spec,
        &x,
        hx_opt,
        &tape,
        &dy,
        Some(&dhy),
        &mut g,
        GradMode::Accumulate,
    )
    .unwrap();
    assert_eq!(
        bits(&acc),
        bits(&g.params.concat()),
        "{name}: accumulated dw"
    );

    // Gradients in a framework layout are what the Rust layout module gives.
    if let Ok(torch) = cell.torch_grads(&grads.params) {
        let mut out: [Vec<T>; 4] = [
            vec![T::ZERO; torch.weight_ih.len()],
            vec![T::ZERO; torch.weight_hh.len()],
            vec![T::ZERO; torch.bias_ih.as_ref().map_or(0, Vec::len)],
            vec![T::ZERO; torch.bias_hh.as_ref().map_or(0, Vec::len)],
        ];
        let [a, b, c, e] = &mut out;
        let dst = FrnnWeightTensorsMut {
            input_weights: tm(a),
            recurrent_weights: tm(b),
            input_bias: if c.is_empty() { NONE_MUT } else { tm(c) },
            recurrent_bias: if e.is_empty() { NONE_MUT } else { tm(e) },
        };
        // SAFETY: valid pointers and lengths.
        let st = unsafe {
            frnn_get_weight_grads(d.ptr(), FrnnWeightFormat::Torch as u32, 0, 0, t(&dw), &dst)
        };
        assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
        assert_eq!(bits(&out[0]), bits(&torch.weight_ih), "{name}: torch grad");
        assert_eq!(bits(&out[1]), bits(&torch.weight_hh), "{name}: torch grad");
    }
    let keras = cell.keras_grads(&grads.params).unwrap();
    let mut kk = vec![T::ZERO; keras.kernel.len()];
    let mut kb = vec![T::ZERO; keras.bias.as_ref().map_or(0, Vec::len)];
    let dst = FrnnWeightTensorsMut {
        input_weights: tm(&mut kk),
        recurrent_weights: NONE_MUT,
        input_bias: if kb.is_empty() { NONE_MUT } else { tm(&mut kb) },
        recurrent_bias: NONE_MUT,
    };
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_get_weight_grads(d.ptr(), FrnnWeightFormat::Keras as u32, 0, 0, t(&dw), &dst)
    };
    assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
    assert_eq!(bits(&kk), bits(&keras.kernel), "{name}: keras kernel grad");
    assert_eq!(
        bits(&kb),
        bits(keras.bias.as_deref().unwrap_or(&[])),
        "{name}: keras bias grad"
    );
}

fn specs() -> Vec<(SeqSpec, bool)> {
    vec![
        (SeqSpec::new(1, 1), false),
        (SeqSpec::new(5, 3), true),
        (
            SeqSpec::new(4, 2)
                .layout(Layout::BatchMajor)
                .go_backwards(true),
            true,
        ),
        (SeqSpec::new(3, 5).return_sequences(false), false),
        (SeqSpec::new(6, 2).threads(3), true),
    ]
}

fn all_cells<T: Real>(dtype: FrnnDtype) {
    let (i, h) = (3, 5);
    for use_bias in [true, false] {
        for (spec, with_state) in specs() {
            let tag = format!("{} bias={use_bias} {spec:?}", T::NAME);
            let mut c = config(FrnnCell::Lstm, dtype, i, h);
            c.use_bias = use_bias as u32;
            let d = create(&c).unwrap();
            let lstm =
                DynLstm::<T>::random(Dyn(i), Dyn(h), LstmKind::default(), use_bias, 11).unwrap();
            abi_matches_rust(&format!("lstm {tag}"), &d, &lstm, &spec, with_state);

            for reset_after in [true, false] {
                let mut c = config(FrnnCell::Gru, dtype, i, h);
                c.use_bias = use_bias as u32;
                c.gru_reset_after = reset_after as u32;
                let d = create(&c).unwrap();
                let kind = GruKind {
                    reset_after,
                    ..Default::default()
                };
                let gru = DynGru::<T>::random(Dyn(i), Dyn(h), kind, use_bias, 12).unwrap();
                abi_matches_rust(
                    &format!("gru ra={reset_after} {tag}"),
                    &d,
                    &gru,
                    &spec,
                    with_state,
                );
            }

            let mut c = config(FrnnCell::SimpleRnn, dtype, i, h);
            c.use_bias = use_bias as u32;
            c.activation = FrnnActivation::Relu as u32;
            let d = create(&c).unwrap();
            let kind = SimpleRnnKind {
                activation: Activation::Relu,
            };
            let rnn = DynSimpleRnn::<T>::random(Dyn(i), Dyn(h), kind, use_bias, 13).unwrap();
            abi_matches_rust(&format!("rnn {tag}"), &d, &rnn, &spec, with_state);
        }
    }
}

#[test]
fn abi_matches_rust_api_f32() {
    all_cells::<f32>(FrnnDtype::F32);
}

#[test]
fn abi_matches_rust_api_f64() {
    all_cells::<f64>(FrnnDtype::F64);
}

fn lstm_desc() -> (Desc, DynLstm<f32>, Vec<f32>) {
    let d = create(&config(FrnnCell::Lstm, FrnnDtype::F32, 3, 4)).unwrap();
    let cell = DynLstm::<f32>::random(Dyn(3), Dyn(4), LstmKind::default(), true, 1).unwrap();
    let ws = set_and_get(&d, &cell);
    (d, cell, ws)
}

#[test]
fn bad_descriptors_are_rejected_with_a_message() {
    let good = config(FrnnCell::Gru, FrnnDtype::F64, 3, 4);
    type Edit = fn(&mut FrnnRnnConfig);
    let cases: [(Edit, FrnnStatus, &str); 13] = [
        (|c| c.cell = 3, FrnnStatus::BadValue, "cell"),
        (|c| c.activation = 5, FrnnStatus::BadValue, "activation"),
        (
            |c| c.recurrent_activation = u32::MAX,
            FrnnStatus::BadValue,
            "recurrent_activation",
        ),
        (
            |c| c.gru_reset_after = 2,
            FrnnStatus::BadValue,
            "gru_reset_after",
        ),
        (|c| c.dtype = 2, FrnnStatus::BadValue, "dtype"),
        (|c| c.use_bias = 7, FrnnStatus::BadValue, "use_bias"),
        (|c| c.input_size = 0, FrnnStatus::BadSize, "input_size"),
        (|c| c.hidden_size = 0, FrnnStatus::BadSize, "hidden_size"),
        (|c| c.num_layers = 0, FrnnStatus::BadSize, "num_layers"),
        (
            |c| c.num_directions = 3,
            FrnnStatus::BadValue,
            "num_directions",
        ),
        (
            |c| c.hidden_size = usize::MAX / 2,
            FrnnStatus::Overflow,
            "hidden_size",
        ),
        (
            |c| c.input_size = usize::MAX / 8,
            FrnnStatus::Overflow,
            "kernel",
        ),
        (
            |c| c.num_layers = usize::MAX,
            FrnnStatus::Overflow,
            "weight_space",
        ),
    ];
    for (edit, status, needle) in cases {
        let mut c = good;
        edit(&mut c);
        let mut d = ptr::null_mut();
        // SAFETY: valid pointers.
        let st = unsafe { frnn_rnn_desc_create(&c, &mut d) };
        expect_err(st, status, needle);
        assert!(d.is_null(), "no descriptor on failure");
    }
    // Null pointers.
    let mut d = ptr::null_mut();
    // SAFETY: null is allowed and reported.
    expect_err(
        unsafe { frnn_rnn_desc_create(ptr::null(), &mut d) },
        FrnnStatus::NullPointer,
        "config",
    );
    // SAFETY: null is allowed and reported.
    expect_err(
        unsafe { frnn_rnn_desc_create(&good, ptr::null_mut()) },
        FrnnStatus::NullPointer,
        "out",
    );
    // SAFETY: null is allowed and reported.
    expect_err(
        unsafe { frnn_rnn_config_init(ptr::null_mut(), 1) },
        FrnnStatus::NullPointer,
        "config",
    );
    // SAFETY: null is allowed and ignored.
    unsafe { frnn_rnn_desc_destroy(ptr::null_mut()) };
    let mut n = 0;
    // SAFETY: null is allowed and reported.
    expect_err(
        unsafe { frnn_get_weight_space_size(ptr::null(), &mut n) },
        FrnnStatus::NullPointer,
        "desc",
    );
    // Absurd but representable sizes: the descriptor is only arithmetic, nothing is allocated.
    let mut c = good;
    c.input_size = 1_000_000;
    c.hidden_size = 1_000_000;
    let big = create(&c).unwrap();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { frnn_get_weight_space_size(big.ptr(), &mut n) },
        FrnnStatus::Ok
    );
    assert_eq!(n, 3 * 1_000_000 * 2_000_000 + 2 * 3_000_000);
    let seq = FrnnSeqConfig {
        time_steps: 1_000_000,
        batch: 1_000_000,
        layout: 0,
        go_backwards: 0,
        return_sequences: 1,
        threads: 1,
    };
    let mut s = FrnnSizes::default();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { frnn_get_sizes(big.ptr(), &seq, &mut s) },
        FrnnStatus::Ok
    );
    assert_eq!(s.y, 1_000_000_000_000_000_000);
    // A call with buffers that small is rejected before anything is allocated.
    let (w, x) = (vec![0.0f64; 8], vec![0.0f64; 8]);
    let mut y = vec![0.0f64; 8];
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_forward_inference(
            big.ptr(),
            &seq,
            t(&w),
            t(&x),
            NONE,
            tm(&mut y),
            NONE_MUT,
            NONE_MUT,
        )
    };
    expect_err(st, FrnnStatus::BadSize, "weight_space");
    let seq = FrnnSeqConfig {
        time_steps: 10_000_000,
        ..seq
    };
    // SAFETY: valid pointers.
    expect_err(
        unsafe { frnn_get_sizes(big.ptr(), &seq, &mut s) },
        FrnnStatus::Overflow,
        "overflows",
    );
    // The statuses have names.
    // SAFETY: static strings.
    let name = |s| {
        unsafe { CStr::from_ptr(frnn_status_name(s)) }
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(name(5), "FRNN_STATUS_UNSUPPORTED");
    assert_eq!(name(-1), "FRNN_STATUS_UNKNOWN");
    // SAFETY: static string.
    let v = unsafe { CStr::from_ptr(frnn_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn bad_buffers_are_rejected_with_a_message() {
    let (d, _cell, ws) = lstm_desc();
    let sc = FrnnSeqConfig {
        time_steps: 2,
        batch: 2,
        layout: 0,
        go_backwards: 0,
        return_sequences: 1,
        threads: 1,
    };
    let n = sizes(&d, &sc);
    let x = vec![0.5f32; n.x];
    let mut y = vec![0.0f32; n.y];
    let fwd =
        |w: FrnnTensor, x: FrnnTensor, hx: FrnnTensor, y: FrnnTensorMut, seq: &FrnnSeqConfig| {
            // SAFETY: the pointers are valid for their lengths or deliberately null.
            unsafe { frnn_forward_inference(d.ptr(), seq, w, x, hx, y, NONE_MUT, NONE_MUT) }
        };
    assert_eq!(fwd(t(&ws), t(&x), NONE, tm(&mut y), &sc), FrnnStatus::Ok);
    expect_err(
        fwd(t(&ws), NONE, NONE, tm(&mut y), &sc),
        FrnnStatus::NullPointer,
        "`x`",
    );
    expect_err(
        fwd(
            t(&ws),
            FrnnTensor {
                data: ptr::null(),
                len: n.x,
            },
            NONE,
            tm(&mut y),
            &sc,
        ),
        FrnnStatus::NullPointer,
        "x",
    );
    expect_err(
        fwd(t(&ws), t(&x[1..]), NONE, tm(&mut y), &sc),
        FrnnStatus::BadSize,
        "`x` has length 11, expected 12",
    );
    expect_err(
        fwd(t(&ws[1..]), t(&x), NONE, tm(&mut y), &sc),
        FrnnStatus::BadSize,
        "weight_space",
    );
    expect_err(
        fwd(t(&ws), t(&x), t(&x[..3]), tm(&mut y), &sc),
        FrnnStatus::BadSize,
        "hx",
    );
    expect_err(
        fwd(t(&ws), t(&x), NONE, tm(&mut y[1..]), &sc),
        FrnnStatus::BadSize,
        "`y`",
    );
    expect_err(
        fwd(t(&ws), t(&x), NONE, NONE_MUT, &sc),
        FrnnStatus::NullPointer,
        "`y`",
    );
    // Misaligned: a float buffer one byte in.
    let bytes = vec![0u8; 4 * n.x + 8];
    let off = (bytes.as_ptr() as usize).next_multiple_of(4) + 1 - bytes.as_ptr() as usize;
    let mis = FrnnTensor {
        data: bytes[off..].as_ptr().cast(),
        len: n.x,
    };
    expect_err(
        fwd(t(&ws), mis, NONE, tm(&mut y), &sc),
        FrnnStatus::BadValue,
        "aligned",
    );
    // An output overlapping an input.
    let mut xy = vec![0.5f32; n.x + n.y];
    let xin = FrnnTensor {
        data: xy.as_ptr().cast(),
        len: n.x,
    };
    let yout = FrnnTensorMut {
        data: xy[n.x - 1..].as_mut_ptr().cast(),
        len: n.y,
    };
    expect_err(
        fwd(t(&ws), xin, NONE, yout, &sc),
        FrnnStatus::BadValue,
        "overlaps `x`",
    );
    // Absurd lengths do not reach any allocation.
    let huge = FrnnTensor {
        data: x.as_ptr().cast(),
        len: usize::MAX / 2,
    };
    expect_err(
        fwd(t(&ws), huge, NONE, tm(&mut y), &sc),
        FrnnStatus::Overflow,
        "x",
    );
    // Bad sequence configurations.
    for (edit, status, needle) in [
        (
            (|s: &mut FrnnSeqConfig| s.time_steps = 0) as fn(&mut FrnnSeqConfig),
            FrnnStatus::BadSize,
            "time_steps",
        ),
        (
            |s: &mut FrnnSeqConfig| s.batch = 0,
            FrnnStatus::BadSize,
            "batch",
        ),
        (
            |s: &mut FrnnSeqConfig| s.threads = 0,
            FrnnStatus::BadSize,
            "threads",
        ),
        (
            |s: &mut FrnnSeqConfig| s.layout = 2,
            FrnnStatus::BadValue,
            "layout",
        ),
        (
            |s: &mut FrnnSeqConfig| s.go_backwards = 9,
            FrnnStatus::BadValue,
            "go_backwards",
        ),
        (
            |s: &mut FrnnSeqConfig| s.return_sequences = 9,
            FrnnStatus::BadValue,
            "return_sequences",
        ),
        (
            |s: &mut FrnnSeqConfig| s.time_steps = usize::MAX,
            FrnnStatus::Overflow,
            "",
        ),
    ] {
        let mut s = sc;
        edit(&mut s);
        expect_err(fwd(t(&ws), t(&x), NONE, tm(&mut y), &s), status, needle);
    }
    // SAFETY: null is allowed and reported.
    let st = unsafe {
        frnn_forward_inference(
            d.ptr(),
            ptr::null(),
            t(&ws),
            t(&x),
            NONE,
            tm(&mut y),
            NONE_MUT,
            NONE_MUT,
        )
    };
    expect_err(st, FrnnStatus::NullPointer, "seq");

    // Training and backward: a short reserve, a bad mode, missing required outputs.
    let mut reserve = vec![0.0f32; n.reserve - 1];
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_forward_training(
            d.ptr(),
            &sc,
            t(&ws),
            t(&x),
            NONE,
            tm(&mut y),
            NONE_MUT,
            NONE_MUT,
            tm(&mut reserve),
        )
    };
    expect_err(st, FrnnStatus::BadSize, "reserve");
    let mut reserve = vec![0.0f32; n.reserve];
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_forward_training(
            d.ptr(),
            &sc,
            t(&ws),
            t(&x),
            NONE,
            tm(&mut y),
            NONE_MUT,
            NONE_MUT,
            tm(&mut reserve),
        )
    };
    assert_eq!(st, FrnnStatus::Ok);
    let dy = vec![1.0f32; n.y];
    let mut dx = vec![0.0f32; n.x];
    let mut dw = vec![0.0f32; n.weight_space];
    let bwd = |dx: FrnnTensorMut, dw: FrnnTensorMut, mode: u32, reserve: FrnnTensor| {
        // SAFETY: the pointers are valid for their lengths or deliberately null.
        unsafe {
            frnn_backward(
                d.ptr(),
                &sc,
                t(&ws),
                t(&x),
                NONE,
                reserve,
                t(&dy),
                NONE,
                dx,
                NONE_MUT,
                dw,
                mode,
                NONE_MUT,
            )
        }
    };
    assert_eq!(
        bwd(tm(&mut dx), tm(&mut dw), 0, t(&reserve)),
        FrnnStatus::Ok
    );
    expect_err(
        bwd(tm(&mut dx), tm(&mut dw), 2, t(&reserve)),
        FrnnStatus::BadValue,
        "mode",
    );
    expect_err(
        bwd(NONE_MUT, tm(&mut dw), 0, t(&reserve)),
        FrnnStatus::NullPointer,
        "dx",
    );
    expect_err(
        bwd(tm(&mut dx), NONE_MUT, 0, t(&reserve)),
        FrnnStatus::NullPointer,
        "dw",
    );
    expect_err(
        bwd(tm(&mut dx), tm(&mut dw), 0, NONE),
        FrnnStatus::NullPointer,
        "reserve",
    );
    expect_err(
        bwd(tm(&mut dx), tm(&mut dw), 0, t(&reserve[1..])),
        FrnnStatus::BadSize,
        "reserve",
    );
    expect_err(
        bwd(tm(&mut dx), tm(&mut dw[1..]), 0, t(&reserve)),
        FrnnStatus::BadSize,
        "dw",
    );

    // Weight conversion: bad format, layer, direction, lengths, missing or extra tensors.
    let cell = DynLstm::<f32>::random(Dyn(3), Dyn(4), LstmKind::default(), true, 1).unwrap();
    let torch = framework_tensors(&cell, FrnnWeightFormat::Torch).unwrap();
    let mut w2 = ws.clone();
    let set = |format: u32, layer: usize, dir: usize, src: &FrnnWeightTensors, w: &mut [f32]| {
        // SAFETY: valid pointers and lengths.
        unsafe { frnn_set_weights(d.ptr(), format, layer, dir, src, tm(w)) }
    };
    let good = tensors(&torch);
    assert_eq!(set(2, 0, 0, &good, &mut w2), FrnnStatus::Ok);
    expect_err(set(4, 0, 0, &good, &mut w2), FrnnStatus::BadValue, "format");
    expect_err(set(2, 1, 0, &good, &mut w2), FrnnStatus::BadValue, "layer");
    expect_err(
        set(2, 0, 1, &good, &mut w2),
        FrnnStatus::BadValue,
        "direction",
    );
    expect_err(
        set(2, 0, 0, &good, &mut w2[1..]),
        FrnnStatus::BadSize,
        "weight_space",
    );
    let mut short = good;
    short.recurrent_weights.len -= 1;
    expect_err(
        set(2, 0, 0, &short, &mut w2),
        FrnnStatus::BadSize,
        "weight_hh",
    );
    let mut missing = good;
    missing.recurrent_bias = NONE;
    expect_err(
        set(2, 0, 0, &missing, &mut w2),
        FrnnStatus::NullPointer,
        "bias_hh",
    );
    let mut extra = tensors(&framework_tensors(&cell, FrnnWeightFormat::Keras).unwrap());
    extra.recurrent_bias = t(&x);
    expect_err(
        set(1, 0, 0, &extra, &mut w2),
        FrnnStatus::BadValue,
        "pass a null pointer",
    );
    // SAFETY: null is allowed and reported.
    let st = unsafe { frnn_set_weights(d.ptr(), 2, 0, 0, ptr::null(), tm(&mut w2)) };
    expect_err(st, FrnnStatus::NullPointer, "src");
    // Setting weights from a tensor inside the weight space itself is an overlap.
    let mut inside = good;
    inside.input_bias = FrnnTensor {
        data: w2.as_ptr().cast(),
        len: 16,
    };
    expect_err(
        set(2, 0, 0, &inside, &mut w2),
        FrnnStatus::BadValue,
        "overlaps",
    );
    let mut lens = [0usize; 4];
    // SAFETY: null is allowed and reported.
    let st = unsafe { frnn_get_weight_tensor_lens(d.ptr(), 2, 0, ptr::null_mut()) };
    expect_err(st, FrnnStatus::NullPointer, "out");
    // SAFETY: valid pointers.
    let st = unsafe { frnn_get_weight_tensor_lens(d.ptr(), 2, 3, lens.as_mut_ptr()) };
    expect_err(st, FrnnStatus::BadValue, "layer");
}

#[test]
fn last_error_is_per_thread() {
    let mut d = ptr::null_mut();
    // SAFETY: null is allowed and reported.
    let st = unsafe { frnn_rnn_desc_create(ptr::null(), &mut d) };
    assert_eq!(st, FrnnStatus::NullPointer);
    let here = last_error();
    assert!(here.contains("config"));
    let there = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(there, "", "another thread has its own (empty) message");
    // A successful call leaves the message as it was.
    let _ = create(&config(FrnnCell::Lstm, FrnnDtype::F32, 2, 2)).unwrap();
    assert_eq!(last_error(), here);
}

/// One descriptor and one weight space shared by many threads calling at once: every thread
/// gets exactly what one thread gets alone.
#[test]
fn many_threads_share_one_descriptor() {
    let (d, _cell, ws) = lstm_desc();
    let sc = FrnnSeqConfig {
        time_steps: 9,
        batch: 3,
        layout: 0,
        go_backwards: 0,
        return_sequences: 1,
        threads: 1,
    };
    let n = sizes(&d, &sc);
    let x = values::<f32>(n.x, 7);
    let dy = values::<f32>(n.y, 8);
    let run = || {
        let mut y = vec![0.0f32; n.y];
        let mut reserve = vec![0.0f32; n.reserve];
        let mut dx = vec![0.0f32; n.x];
        let mut dw = vec![0.0f32; n.weight_space];
        // SAFETY: valid pointers and lengths.
        unsafe {
            assert_eq!(
                frnn_forward_training(
                    d.ptr(),
                    &sc,
                    t(&ws),
                    t(&x),
                    NONE,
                    tm(&mut y),
                    NONE_MUT,
                    NONE_MUT,
                    tm(&mut reserve)
                ),
                FrnnStatus::Ok
            );
            assert_eq!(
                frnn_backward(
                    d.ptr(),
                    &sc,
                    t(&ws),
                    t(&x),
                    NONE,
                    t(&reserve),
                    t(&dy),
                    NONE,
                    tm(&mut dx),
                    NONE_MUT,
                    tm(&mut dw),
                    0,
                    NONE_MUT
                ),
                FrnnStatus::Ok
            );
        }
        (bits(&y), bits(&dx), bits(&dw))
    };
    let alone = run();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| (0..20).map(|_| run()).collect::<Vec<_>>()))
            .collect();
        for h in handles {
            for r in h.join().unwrap() {
                assert!(
                    r == alone,
                    "a concurrent call differs from the single-threaded one"
                );
            }
        }
    });
}

/// Regression (fuzz input `fuzz/regressions/capi/oom-78c1…`): a descriptor with 2²⁸ layers
/// used to build a per-layer offset table, and ran out of memory. Sizes are now pure
/// arithmetic: any layer count is answered at once, without allocating.
#[test]
fn huge_layer_counts_allocate_nothing() {
    for layers in [1usize << 28, 1 << 40, usize::MAX] {
        let mut c = config(FrnnCell::Lstm, FrnnDtype::F32, 3, 4);
        c.num_layers = layers;
        let mut d = ptr::null_mut();
        // SAFETY: valid pointers.
        let st = unsafe { frnn_rnn_desc_create(&c, &mut d) };
        if layers == usize::MAX {
            expect_err(st, FrnnStatus::Overflow, "weight_space");
            assert!(d.is_null());
        } else {
            assert_eq!(st, FrnnStatus::Ok, "{}", last_error());
            let d = Desc(d);
            let mut n = 0;
            // SAFETY: valid pointers.
            assert_eq!(
                unsafe { frnn_get_weight_space_size(d.ptr(), &mut n) },
                FrnnStatus::Ok
            );
            assert!(n > layers);
        }
    }
    // The recorded input itself replays in `tests/fuzz_regressions.rs`.
}

/// Stacks and bidirectional layers through the ABI against `fused_rnn::layer::Rnn`: the
/// sizes, and forward inference, forward training (outputs and reserve) and backward (every
/// gradient, overwritten and accumulated) bit for bit.
fn stack_matches_rust<T: Real>(
    dtype: FrnnDtype,
    cell: fused_rnn::layer::CellConfig,
    layers: usize,
    directions: usize,
    use_bias: bool,
) {
    use fused_rnn::layer::{Merge, Rnn, RnnConfig, RnnGrads, RunSpec};
    let (i, h) = (3, 5);
    let mut config = RnnConfig::new(cell, i, h).layers(layers).use_bias(use_bias);
    if directions == 2 {
        config = config.bidirectional(Merge::Concat);
    }
    let rnn = Rnn::<T>::random(config, 31).unwrap();
    let (code, reset_after, act, rec) = match cell {
        fused_rnn::layer::CellConfig::SimpleRnn(k) => {
            (FrnnCell::SimpleRnn, 1, k.activation, Activation::Sigmoid)
        }
        fused_rnn::layer::CellConfig::Lstm(k) => {
            (FrnnCell::Lstm, 1, k.activation, k.recurrent_activation)
        }
        fused_rnn::layer::CellConfig::Gru(k) => (
            FrnnCell::Gru,
            k.reset_after as u32,
            k.activation,
            k.recurrent_activation,
        ),
    };
    let mut c = config_for(code, dtype, i, h);
    c.gru_reset_after = reset_after;
    c.activation = Activation::ALL.iter().position(|&a| a == act).unwrap() as u32;
    c.recurrent_activation = Activation::ALL.iter().position(|&a| a == rec).unwrap() as u32;
    c.use_bias = use_bias as u32;
    c.num_layers = layers;
    c.num_directions = directions;
    let d = create(&c).unwrap();
    let mut n_ws = 0;
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { frnn_get_weight_space_size(d.ptr(), &mut n_ws) },
        FrnnStatus::Ok
    );
    let mut ws = vec![T::ZERO; n_ws];
    for layer in 0..layers {
        for dir in 0..directions {
            let cell = &rnn.cells()[layer * directions + dir];
            // Alternate formats; PyTorch has no reset-before GRU.
            let w = cell.weights();
            let format = if (layer + dir) % 2 == 0 || reset_after == 0 {
                FrnnWeightFormat::Internal
            } else {
                FrnnWeightFormat::Torch
            };
            let src: [Option<Vec<T>>; 4] = match (format, cell) {
                (FrnnWeightFormat::Torch, fused_rnn::layer::AnyCell::Lstm(x)) => {
                    framework_tensors(x, format).unwrap()
                }
                (FrnnWeightFormat::Torch, fused_rnn::layer::AnyCell::Gru(x)) => {
                    framework_tensors(x, format).unwrap()
                }
                (FrnnWeightFormat::Torch, fused_rnn::layer::AnyCell::SimpleRnn(x)) => {
                    framework_tensors(x, format).unwrap()
                }
                _ => [
                    Some(w.kernel().to_vec()),
                    Some(w.recurrent_kernel().to_vec()),
                    w.bias().map(<[T]>::to_vec),
                    w.recurrent_bias().map(<[T]>::to_vec),
                ],
            };
            // SAFETY: valid pointers and lengths.
            let st = unsafe {
                frnn_set_weights(
                    d.ptr(),
                    format as u32,
                    layer,
                    dir,
                    &tensors(&src),
                    tm(&mut ws),
                )
            };
            assert_eq!(st, FrnnStatus::Ok, "{}", last_error());
        }
    }
    let want_ws: Vec<T> = rnn
        .cells()
        .iter()
        .flat_map(|c| {
            let w = c.weights();
            let mut v = w.kernel().to_vec();
            v.extend_from_slice(w.recurrent_kernel());
            v.extend(w.bias().unwrap_or(&[]));
            v.extend(w.recurrent_bias().unwrap_or(&[]));
            v
        })
        .collect();
    assert_eq!(bits(&ws), bits(&want_ws), "weight space");

    for (steps, b, layout, return_sequences, with_state) in [
        (4, 3, Layout::TimeMajor, true, true),
        (1, 1, Layout::BatchMajor, true, false),
        (5, 2, Layout::BatchMajor, false, true),
    ] {
        let name = format!(
            "{} {cell:?} L={layers} D={directions} bias={use_bias} T={steps} B={b} {layout:?} rs={return_sequences}",
            T::NAME
        );
        let rnn = Rnn::new(
            config.return_sequences(return_sequences),
            rnn.cells().to_vec(),
        )
        .unwrap();
        let run = RunSpec::new(steps, b).layout(layout);
        let sc = FrnnSeqConfig {
            time_steps: steps,
            batch: b,
            layout: layout as u32,
            go_backwards: 0,
            return_sequences: return_sequences as u32,
            threads: 2,
        };
        let n = sizes(&d, &sc);
        assert_eq!(n.reserve, rnn.tape_len(&run).unwrap(), "{name}: reserve");
        assert_eq!(n.y, rnn.y_len(&run).unwrap(), "{name}: y");
        assert_eq!(n.state, rnn.state_len(b).unwrap(), "{name}: state");
        let x = values::<T>(n.x, 1);
        let hx = values::<T>(n.state, 2);
        let (hx_o, hx_t) = if with_state {
            (Some(&hx[..]), t(&hx))
        } else {
            (None, NONE)
        };
        let (mut y, mut hy) = (vec![T::ZERO; n.y], vec![T::ZERO; n.state]);
        let (mut wy, mut why) = (vec![T::ZERO; n.y], vec![T::ZERO; n.state]);
        rnn.forward(&run, &x, hx_o, &mut wy, &mut why).unwrap();
        // SAFETY: valid pointers and lengths.
        let st = unsafe {
            frnn_forward_inference(
                d.ptr(),
                &sc,
                t(&ws),
                t(&x),
                hx_t,
                tm(&mut y),
                tm(&mut hy),
                NONE_MUT,
            )
        };
        assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
        assert_eq!(bits(&y), bits(&wy), "{name}: y");
        assert_eq!(bits(&hy), bits(&why), "{name}: hy");

        let mut tape = vec![T::ZERO; n.reserve];
        rnn.forward_train(&run, &x, hx_o, &mut tape, &mut wy, &mut why)
            .unwrap();
        let mut reserve = vec![T::ZERO; n.reserve];
        // SAFETY: valid pointers and lengths.
        let st = unsafe {
            frnn_forward_training(
                d.ptr(),
                &sc,
                t(&ws),
                t(&x),
                hx_t,
                tm(&mut y),
                NONE_MUT,
                NONE_MUT,
                tm(&mut reserve),
            )
        };
        assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
        assert_eq!(bits(&y), bits(&wy), "{name}: training y");
        assert_eq!(bits(&reserve), bits(&tape), "{name}: reserve");

        let dy = values::<T>(n.y, 3);
        let dhy = values::<T>(n.state, 4);
        let start = values::<T>(n.weight_space, 5);
        for mode in [FrnnGradMode::Overwrite, FrnnGradMode::Accumulate] {
            let mut g = RnnGrads::zeros(&rnn, &run).unwrap();
            let mut at = 0;
            for p in g.params.iter_mut().flatten() {
                let len = p.len();
                p.copy_from_slice(&start[at..at + len]);
                at += len;
            }
            let rmode = match mode {
                FrnnGradMode::Overwrite => GradMode::Overwrite,
                FrnnGradMode::Accumulate => GradMode::Accumulate,
            };
            rnn.bptt(&run, &x, hx_o, &tape, &dy, Some(&dhy), &mut g, rmode)
                .unwrap();
            let (mut dx, mut dhx, mut dw) =
                (vec![T::ZERO; n.x], vec![T::ZERO; n.state], start.clone());
            // SAFETY: valid pointers and lengths.
            let st = unsafe {
                frnn_backward(
                    d.ptr(),
                    &sc,
                    t(&ws),
                    t(&x),
                    hx_t,
                    t(&reserve),
                    t(&dy),
                    t(&dhy),
                    tm(&mut dx),
                    tm(&mut dhx),
                    tm(&mut dw),
                    mode as u32,
                    NONE_MUT,
                )
            };
            assert_eq!(st, FrnnStatus::Ok, "{name}: {}", last_error());
            assert_eq!(bits(&dx), bits(&g.dx), "{name}: dx");
            assert_eq!(bits(&dhx), bits(&g.d_initial_state), "{name}: dhx");
            let want: Vec<T> = g.params.iter().flatten().flatten().copied().collect();
            assert_eq!(bits(&dw), bits(&want), "{name} {mode:?}: dw");
        }
    }
}

fn config_for(cell: FrnnCell, dtype: FrnnDtype, i: usize, h: usize) -> FrnnRnnConfig {
    config(cell, dtype, i, h)
}

fn stacks<T: Real>(dtype: FrnnDtype) {
    use fused_rnn::layer::CellConfig;
    let cells = [
        CellConfig::Lstm(LstmKind::default()),
        CellConfig::Gru(GruKind::default()),
        CellConfig::Gru(GruKind {
            reset_after: false,
            ..Default::default()
        }),
        CellConfig::SimpleRnn(SimpleRnnKind {
            activation: Activation::Relu,
        }),
    ];
    for cell in cells {
        for (layers, directions) in [(2, 1), (1, 2), (3, 2)] {
            for use_bias in [true, false] {
                stack_matches_rust::<T>(dtype, cell, layers, directions, use_bias);
            }
        }
    }
}

#[test]
fn stacks_match_the_layer_api_f32() {
    stacks::<f32>(FrnnDtype::F32);
}

#[test]
fn stacks_match_the_layer_api_f64() {
    stacks::<f64>(FrnnDtype::F64);
}

/// A bidirectional stack cannot go backwards (the layer engine's rule), reported at the call.
#[test]
fn bidirectional_go_backwards_is_rejected() {
    let mut c = config(FrnnCell::Gru, FrnnDtype::F32, 2, 3);
    c.num_directions = 2;
    let d = create(&c).unwrap();
    let sc = FrnnSeqConfig {
        time_steps: 2,
        batch: 1,
        layout: 0,
        go_backwards: 1,
        return_sequences: 1,
        threads: 1,
    };
    let mut s = FrnnSizes::default();
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { frnn_get_sizes(d.ptr(), &sc, &mut s) },
        FrnnStatus::Ok
    );
    let (ws, x) = (vec![0.1f32; s.weight_space], vec![0.2f32; s.x]);
    let mut y = vec![0.0f32; s.y];
    // SAFETY: valid pointers and lengths.
    let st = unsafe {
        frnn_forward_inference(
            d.ptr(),
            &sc,
            t(&ws),
            t(&x),
            NONE,
            tm(&mut y),
            NONE_MUT,
            NONE_MUT,
        )
    };
    expect_err(st, FrnnStatus::BadValue, "go_backwards");
}
