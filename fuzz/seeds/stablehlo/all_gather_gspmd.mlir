module @all_gather_gspmd attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<8x4xf64> {mhlo.sharding = "{replicated}"}) -> (tensor<8x4xf64> {mhlo.sharding = "{replicated}"}) {
    %0 = "stablehlo.custom_call"(%arg0) {call_target_name = "Sharding", mhlo.sharding = "{devices=[4,1]0,1,2,3}"} : (tensor<8x4xf64>) -> tensor<8x4xf64>
    %1 = "stablehlo.custom_call"(%0) {call_target_name = "SPMDFullToShardShape", mhlo.sharding = "{manual}"} : (tensor<8x4xf64>) -> tensor<2x4xf64>
    %4 = "func.call"(%1) {callee = @manual_body_0} : (tensor<2x4xf64>) -> tensor<8x4xf64>
    %5 = "stablehlo.custom_call"(%4) {call_target_name = "Sharding", mhlo.sharding = "{manual}"} : (tensor<8x4xf64>) -> tensor<8x4xf64>
    %6 = "stablehlo.custom_call"(%5) {call_target_name = "SPMDShardToFullShape", mhlo.sharding = "{replicated}"} : (tensor<8x4xf64>) -> tensor<8x4xf64>
    "func.return"(%6) : (tensor<8x4xf64>) -> ()
  }
  func.func private @manual_body_0(%2: tensor<2x4xf64>) -> (tensor<8x4xf64>) {
    %3 = "stablehlo.all_gather"(%2) {all_gather_dim = 0 : i64, channel_handle = #stablehlo.channel_handle<handle = 1, type = 1>, replica_groups = dense<[[0, 1, 2, 3]]> : tensor<1x4xi64>, use_global_device_ids} : (tensor<2x4xf64>) -> tensor<8x4xf64>
    "func.return"(%3) : (tensor<8x4xf64>) -> ()
  }
}
