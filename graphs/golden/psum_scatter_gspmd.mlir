module @psum_scatter_gspmd attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<8x4xf64> {mhlo.sharding = "{replicated}"}) -> (tensor<8x1xf64> {mhlo.sharding = "{replicated}"}) {
    %0 = "stablehlo.custom_call"(%arg0) {call_target_name = "Sharding", mhlo.sharding = "{devices=[4,1]0,1,2,3}"} : (tensor<8x4xf64>) -> tensor<8x4xf64>
    %1 = "stablehlo.custom_call"(%0) {call_target_name = "SPMDFullToShardShape", mhlo.sharding = "{manual}"} : (tensor<8x4xf64>) -> tensor<2x4xf64>
    %8 = "func.call"(%1) {callee = @manual_body_0} : (tensor<2x4xf64>) -> tensor<8x1xf64>
    %9 = "stablehlo.custom_call"(%8) {call_target_name = "Sharding", mhlo.sharding = "{manual}"} : (tensor<8x1xf64>) -> tensor<8x1xf64>
    %10 = "stablehlo.custom_call"(%9) {call_target_name = "SPMDShardToFullShape", mhlo.sharding = "{replicated}"} : (tensor<8x1xf64>) -> tensor<8x1xf64>
    "func.return"(%10) : (tensor<8x1xf64>) -> ()
  }
  func.func private @manual_body_0(%2: tensor<2x4xf64>) -> (tensor<8x1xf64>) {
    %3 = "stablehlo.reduce_scatter"(%2) ({
    ^bb0(%4: tensor<f64>, %5: tensor<f64>):
      %6 = "stablehlo.add"(%4, %5) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      "stablehlo.return"(%6) : (tensor<f64>) -> ()
    }) {scatter_dimension = 1 : i64, channel_handle = #stablehlo.channel_handle<handle = 1, type = 1>, replica_groups = dense<[[0, 1, 2, 3]]> : tensor<1x4xi64>, use_global_device_ids} : (tensor<2x4xf64>) -> tensor<2x1xf64>
    %7 = "stablehlo.all_gather"(%3) {all_gather_dim = 0 : i64, channel_handle = #stablehlo.channel_handle<handle = 2, type = 1>, replica_groups = dense<[[0, 1, 2, 3]]> : tensor<1x4xi64>, use_global_device_ids} : (tensor<2x1xf64>) -> tensor<8x1xf64>
    "func.return"(%7) : (tensor<8x1xf64>) -> ()
  }
}
