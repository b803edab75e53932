// Status: the result of an operation that can fail in an expected way (bad config, missing
// file, busy database, failed run). Modelled on leveldb::Status: cheap to return when OK, carries
// a code and a human message otherwise. Programming errors still throw/abort; Status is for
// failures that a caller is expected to handle or report.
#pragma once

#include <string>
#include <utility>

namespace moe {

class Status {
 public:
  enum class Code {
    kOk = 0,
    kInvalidArgument,  // bad input: config, grid, CLI value. Message names key/value/position.
    kNotFound,         // a named file, sweep, run or checkpoint does not exist.
    kIOError,          // the OS refused a read/write.
    kCorruption,       // stored data (checkpoint, metrics line, database) is malformed.
    kBusy,             // a database or resource is locked by another writer.
    kUnsupported,      // valid request this build/machine cannot honour (e.g. GPU-only option on CPU).
    kFailed,           // an operation ran and failed (a training run, a spawned process).
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
  static Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
  static Status IOError(std::string m) { return Status(Code::kIOError, std::move(m)); }
  static Status Corruption(std::string m) { return Status(Code::kCorruption, std::move(m)); }
  static Status Busy(std::string m) { return Status(Code::kBusy, std::move(m)); }
  static Status Unsupported(std::string m) { return Status(Code::kUnsupported, std::move(m)); }
  static Status Failed(std::string m) { return Status(Code::kFailed, std::move(m)); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  bool IsInvalidArgument() const { return code_ == Code::kInvalidArgument; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsUnsupported() const { return code_ == Code::kUnsupported; }
  bool IsBusy() const { return code_ == Code::kBusy; }

  // "Invalid argument: <message>", or "OK".
  std::string ToString() const;

  // Prefixes the message with context ("while loading run.toml: ..."); OK stays OK.
  Status WithContext(const std::string& context) const;

 private:
  Status(Code c, std::string m) : code_(c), message_(std::move(m)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

}  // namespace moe

// Returns early from the enclosing function when `expr` yields a non-OK Status.
#define MOE_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::moe::Status _moe_st = (expr);            \
    if (!_moe_st.ok()) return _moe_st;         \
  } while (0)
