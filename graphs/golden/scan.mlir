module @scan {
  func.func public @main(%arg0: tensor<3xf64>, %arg1: tensor<4x3xf64>, %arg2: tensor<3xf64>) -> (tensor<3xf64>) {
    %0 = "stablehlo.constant"() {value = dense<0> : tensor<i32>} : () -> tensor<i32>
    %1 = "stablehlo.constant"() {value = dense<0.0> : tensor<f64>} : () -> tensor<f64>
    %2 = "stablehlo.broadcast_in_dim"(%1) {broadcast_dimensions = array<i64>} : (tensor<f64>) -> tensor<4x3xf64>
    %3:5 = "stablehlo.while"(%0, %arg2, %arg0, %arg1, %2) ({
    ^bb0(%4: tensor<i32>, %5: tensor<3xf64>, %6: tensor<3xf64>, %7: tensor<4x3xf64>, %8: tensor<4x3xf64>):
      %9 = "stablehlo.constant"() {value = dense<4> : tensor<i32>} : () -> tensor<i32>
      %10 = "stablehlo.compare"(%4, %9) {comparison_direction = #stablehlo<comparison_direction LT>} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      "stablehlo.return"(%10) : (tensor<i1>) -> ()
    }, {
    ^bb0(%11: tensor<i32>, %12: tensor<3xf64>, %13: tensor<3xf64>, %14: tensor<4x3xf64>, %15: tensor<4x3xf64>):
      %16 = "stablehlo.constant"() {value = dense<0> : tensor<i32>} : () -> tensor<i32>
      %17 = "stablehlo.dynamic_slice"(%14, %11, %16) {slice_sizes = array<i64: 1, 3>} : (tensor<4x3xf64>, tensor<i32>, tensor<i32>) -> tensor<1x3xf64>
      %18 = "stablehlo.reshape"(%17) : (tensor<1x3xf64>) -> tensor<3xf64>
      %19 = "stablehlo.multiply"(%13, %18) : (tensor<3xf64>, tensor<3xf64>) -> tensor<3xf64>
      %20 = "stablehlo.add"(%19, %12) : (tensor<3xf64>, tensor<3xf64>) -> tensor<3xf64>
      %21 = "stablehlo.tanh"(%20) : (tensor<3xf64>) -> tensor<3xf64>
      %22 = "stablehlo.sine"(%21) : (tensor<3xf64>) -> tensor<3xf64>
      %23 = "stablehlo.constant"() {value = dense<1> : tensor<i32>} : () -> tensor<i32>
      %24 = "stablehlo.add"(%11, %23) : (tensor<i32>, tensor<i32>) -> tensor<i32>
      %25 = "stablehlo.reshape"(%22) : (tensor<3xf64>) -> tensor<1x3xf64>
      %26 = "stablehlo.dynamic_update_slice"(%15, %25, %11, %16) : (tensor<4x3xf64>, tensor<1x3xf64>, tensor<i32>, tensor<i32>) -> tensor<4x3xf64>
      "stablehlo.return"(%24, %12, %21, %14, %26) : (tensor<i32>, tensor<3xf64>, tensor<3xf64>, tensor<4x3xf64>, tensor<4x3xf64>) -> ()
    }) : (tensor<i32>, tensor<3xf64>, tensor<3xf64>, tensor<4x3xf64>, tensor<4x3xf64>) -> (tensor<i32>, tensor<3xf64>, tensor<3xf64>, tensor<4x3xf64>, tensor<4x3xf64>)
    %27 = "stablehlo.constant"() {value = dense<0.0> : tensor<f64>} : () -> tensor<f64>
    %28 = "stablehlo.reduce"(%3#4, %27) ({
    ^bb0(%29: tensor<f64>, %30: tensor<f64>):
      %31 = "stablehlo.add"(%29, %30) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      "stablehlo.return"(%31) : (tensor<f64>) -> ()
    }) {dimensions = array<i64: 0>} : (tensor<4x3xf64>, tensor<f64>) -> tensor<3xf64>
    %32 = "stablehlo.add"(%28, %3#2) : (tensor<3xf64>, tensor<3xf64>) -> tensor<3xf64>
    "func.return"(%32) : (tensor<3xf64>) -> ()
  }
}
