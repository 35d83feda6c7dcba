mod common;

use basic::runtime::HostArray;
use common::{check_grads, run_fn, Rng};

#[test]
fn square_sum_and_gradient() {
    let out = run_fn(&[HostArray::new(&[3], &[1f32, 2., 3.]).unwrap()], |_, p| {
        let loss = p[0].square()?.sum_all()?;
        let g = basic::autodiff::grad(&loss, &[p[0].clone()])?;
        Ok(vec![loss, g[0].clone()])
    });
    assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![14.]);
    assert_eq!(out[1].to_vec::<f32>().unwrap(), vec![2., 4., 6.]);
}

#[test]
fn matmul_tanh_gradcheck() {
    let mut r = Rng(1);
    check_grads(
        "matmul_tanh",
        &[r.array(&[2, 3], -1., 1.), r.array(&[3, 4], -1., 1.)],
        |_, p| p[0].matmul(&p[1])?.tanh(),
        1e-6,
    );
}
