#include "core/util/exit_codes.h"

namespace moe {

const char* ExitCodeName(int code) {
  switch (code) {
    case kExitCompleted: return "completed";
    case kExitFailed: return "failed";
    case kExitInvalidConfig: return "invalid_config";
    case kExitDiverged: return "diverged";
    case kExitInterrupted: return "interrupted";
    default: return "unknown";
  }
}

}  // namespace moe
