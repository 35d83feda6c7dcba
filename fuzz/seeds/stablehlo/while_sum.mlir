module @while_sum {
  func.func public @main(%start: tensor<f32>) -> tensor<f32> {
    %c0 = stablehlo.constant dense<0> : tensor<i32>
    %r:2 = stablehlo.while(%i = %c0, %acc = %start) : tensor<i32>, tensor<f32>
     cond {
      %ten = stablehlo.constant dense<10> : tensor<i32>
      %p = stablehlo.compare LT, %i, %ten : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %p : tensor<i1>
    } do {
      %one = stablehlo.constant dense<1> : tensor<i32>
      %n = stablehlo.add %i, %one : tensor<i32>
      %f = stablehlo.convert %i : (tensor<i32>) -> tensor<f32>
      %a = stablehlo.add %acc, %f : tensor<f32>
      stablehlo.return %n, %a : tensor<i32>, tensor<f32>
    }
    return %r#1 : tensor<f32>
  }
}
