// The choice of a CPU sparse-convolution path (conv_algorithm.h) and this thread's forced path.
#include "conv_algorithm.h"

#include <c10/util/Exception.h>

#include <array>
#include <utility>

namespace sparsevision {
namespace {

constexpr std::array<std::pair<ConvAlgorithm, const char*>, 4> kConvAlgorithmNames{{
    {ConvAlgorithm::kRowPairs, "row_pairs"},
    {ConvAlgorithm::kRowBlocks, "row_blocks"},
    {ConvAlgorithm::kNarrowOutputs, "narrow_outputs"},
    {ConvAlgorithm::kGrouped, "grouped"},
}};

thread_local std::string forced_algorithm;   // empty: none

int64_t accumulator_bytes(at::ScalarType dtype) {
  return dtype == at::kDouble ? sizeof(double) : sizeof(float);   // half and bfloat16 accumulate in float
}

// What `algorithm` needs of `problem` that it lacks, or "" if it can take it.
std::string unmet_requirement(ConvAlgorithm algorithm, const ConvProblem& problem) {
  switch (algorithm) {
    case ConvAlgorithm::kRowPairs:
    case ConvAlgorithm::kRowBlocks:
      return problem.groups == 1 ? "" : "groups == 1";
    case ConvAlgorithm::kNarrowOutputs:
      return problem.groups == 1 && problem.out_channels <= kNarrowOutputs
                 ? ""
                 : "groups == 1 and at most " + std::to_string(kNarrowOutputs) + " outputs";
    case ConvAlgorithm::kGrouped:
      break;
  }
  return "";
}

}  // namespace

ConvAlgorithm choose_conv_algorithm(const ConvProblem& problem) {
  if (problem.groups > 1) return ConvAlgorithm::kGrouped;
  if (problem.out_channels <= kNarrowOutputs) return ConvAlgorithm::kNarrowOutputs;
  const int64_t weight_bytes = problem.taps * problem.in_channels * padded_output_channels(problem.out_channels) *
                               accumulator_bytes(problem.dtype);
  // Kernel-1 layers (shortcut projections) always take the row blocks: every row has its one tap, so each weight
  // vector loaded serves four rows instead of two (measured 12-45 % faster; 96 -> 128 channels at 115k sites: 41 ->
  // 34 ms).
  const bool kernel_one = problem.taps == 1;
  return kernel_one || weight_bytes > kWideWeightBytes ? ConvAlgorithm::kRowBlocks : ConvAlgorithm::kRowPairs;
}

ConvAlgorithm conv_algorithm_for(const ConvProblem& problem) {
  if (forced_algorithm.empty()) return choose_conv_algorithm(problem);
  for (const auto& [algorithm, name] : kConvAlgorithmNames) {
    if (forced_algorithm != name) continue;
    const std::string requirement = unmet_requirement(algorithm, problem);
    TORCH_CHECK_VALUE(requirement.empty(), "sparse_conv: the forced algorithm '", name, "' needs ", requirement,
                      "; this layer has groups=", problem.groups, " and ", problem.out_channels, " outputs");
    return algorithm;
  }
  TORCH_CHECK_VALUE(false, "sparse_conv: the forced algorithm '", forced_algorithm,
                    "' is not a CPU path; CPU tensors take row_pairs, row_blocks, narrow_outputs or grouped");
}

WeightGradAlgorithm choose_weight_grad_algorithm(int64_t groups) {
  return groups == 1 ? WeightGradAlgorithm::kRegisterTiles : WeightGradAlgorithm::kGrouped;
}

const char* algorithm_name(ConvAlgorithm algorithm) {
  for (const auto& [known, name] : kConvAlgorithmNames) {
    if (known == algorithm) return name;
  }
  return "unknown";
}

const char* algorithm_name(WeightGradAlgorithm algorithm) {
  return algorithm == WeightGradAlgorithm::kRegisterTiles ? "register_tiles" : "grouped";
}

void force_conv_algorithm(const std::string& name) { forced_algorithm = name; }

at::ScalarType floating_dtype_named(const std::string& name) {
  if (name == "float64") return at::kDouble;
  if (name == "float32") return at::kFloat;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  TORCH_CHECK_VALUE(false, "sparse_conv: dtype must be float64, float32, float16 or bfloat16, got '", name, "'");
}

}  // namespace sparsevision
