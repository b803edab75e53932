# Finds LibTorch without flags: when neither Torch_DIR nor a CMAKE_PREFIX_PATH entry holding
# TorchConfig.cmake is given, ask Python for torch.utils.cmake_prefix_path. The project's own
# .venv (made by scripts/setup.sh) is tried first, then the python3 on PATH (the GPU image's).
if(Torch_DIR)
  return()
endif()
find_file(_moe_torch_cfg TorchConfig.cmake PATH_SUFFIXES Torch NO_CACHE
          PATHS ENV CMAKE_PREFIX_PATH NO_DEFAULT_PATH)
if(_moe_torch_cfg)
  return()
endif()
foreach(_py "${CMAKE_SOURCE_DIR}/.venv/bin/python" python3)
  execute_process(COMMAND ${_py} -c "import torch;print(torch.utils.cmake_prefix_path)"
                  OUTPUT_VARIABLE _moe_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE _moe_rc ERROR_QUIET)
  if(_moe_rc EQUAL 0 AND _moe_torch_prefix)
    list(APPEND CMAKE_PREFIX_PATH "${_moe_torch_prefix}")
    set(MOE_PYTHON "${_py}" CACHE FILEPATH "Python with torch, used by cross-check tests")
    message(STATUS "moe-sweep: LibTorch from ${_py}: ${_moe_torch_prefix}")
    return()
  endif()
endforeach()
message(FATAL_ERROR "LibTorch not found: run scripts/setup.sh (makes .venv with torch==2.11.0), "
                    "or pass -DTorch_DIR=<dir holding TorchConfig.cmake>.")
