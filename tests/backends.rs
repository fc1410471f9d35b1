//! Which backends ran. `FUSED_RNN_EXPECT_BACKENDS` (comma-separated, set by CI from the CPU
//! flags the operating system reports) names backends that must be available, so that a test
//! run can never silently skip an ISA the machine has.

use fused_rnn::{Backend, active_backend, set_backend, with_backend};

#[test]
fn expected_backends_are_available() {
    let available = Backend::available();
    println!(
        "available backends: {available:?}; active: {}",
        active_backend()
    );
    assert_eq!(available.first(), Some(&Backend::Scalar));
    if let Ok(list) = std::env::var("FUSED_RNN_EXPECT_BACKENDS") {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let b = Backend::from_name(name).unwrap();
            assert!(
                available.contains(&b),
                "{b} expected but not available: {available:?}"
            );
        }
    }
}

#[test]
fn forcing_a_backend() {
    for b in Backend::available() {
        assert_eq!(with_backend(b, active_backend).unwrap(), b);
    }
    for b in Backend::ALL.into_iter().filter(|b| !b.is_available()) {
        assert!(with_backend(b, || ()).is_err());
        assert!(set_backend(Some(b)).is_err());
    }
    assert!(Backend::from_name("sse9").is_err());
}
