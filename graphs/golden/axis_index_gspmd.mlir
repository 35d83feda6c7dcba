module @axis_index_gspmd attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<8x4xf64> {mhlo.sharding = "{replicated}"}) -> (tensor<8x4xf64> {mhlo.sharding = "{replicated}"}) {
    %0 = "stablehlo.custom_call"(%arg0) {call_target_name = "Sharding", mhlo.sharding = "{devices=[4,1]0,1,2,3}"} : (tensor<8x4xf64>) -> tensor<8x4xf64>
    %1 = "stablehlo.custom_call"(%0) {call_target_name = "SPMDFullToShardShape", mhlo.sharding = "{manual}"} : (tensor<8x4xf64>) -> tensor<2x4xf64>
    %13 = "func.call"(%1) {callee = @manual_body_0} : (tensor<2x4xf64>) -> tensor<8x4xf64>
    %14 = "stablehlo.custom_call"(%13) {call_target_name = "Sharding", mhlo.sharding = "{manual}"} : (tensor<8x4xf64>) -> tensor<8x4xf64>
    %15 = "stablehlo.custom_call"(%14) {call_target_name = "SPMDShardToFullShape", mhlo.sharding = "{replicated}"} : (tensor<8x4xf64>) -> tensor<8x4xf64>
    "func.return"(%15) : (tensor<8x4xf64>) -> ()
  }
  func.func private @manual_body_0(%2: tensor<2x4xf64>) -> (tensor<8x4xf64>) {
    %3 = "stablehlo.partition_id"() : () -> tensor<ui32>
    %4 = "stablehlo.convert"(%3) : (tensor<ui32>) -> tensor<i32>
    %5 = "stablehlo.constant"() {value = dense<1> : tensor<i32>} : () -> tensor<i32>
    %6 = "stablehlo.divide"(%4, %5) : (tensor<i32>, tensor<i32>) -> tensor<i32>
    %7 = "stablehlo.constant"() {value = dense<4> : tensor<i32>} : () -> tensor<i32>
    %8 = "stablehlo.remainder"(%6, %7) : (tensor<i32>, tensor<i32>) -> tensor<i32>
    %9 = "stablehlo.convert"(%8) : (tensor<i32>) -> tensor<f64>
    %10 = "stablehlo.broadcast_in_dim"(%9) {broadcast_dimensions = array<i64>} : (tensor<f64>) -> tensor<2x4xf64>
    %11 = "stablehlo.add"(%2, %10) : (tensor<2x4xf64>, tensor<2x4xf64>) -> tensor<2x4xf64>
    %12 = "stablehlo.all_gather"(%11) {all_gather_dim = 0 : i64, channel_handle = #stablehlo.channel_handle<handle = 1, type = 1>, replica_groups = dense<[[0, 1, 2, 3]]> : tensor<1x4xi64>, use_global_device_ids} : (tensor<2x4xf64>) -> tensor<8x4xf64>
    "func.return"(%12) : (tensor<8x4xf64>) -> ()
  }
}
