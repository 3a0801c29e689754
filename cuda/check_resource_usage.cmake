# A test of the build: compiles cuda/softmax.cu for one architecture with ptxas's resource report
# and fails unless every warp-per-row kernel (the row held in registers) has no stack frame and no
# spills, i.e. no local memory. Run as
#   cmake -DNVCC=... -DARCH=90 -DSOURCE_DIR=... -DBINARY_DIR=... -P check_resource_usage.cmake
foreach(var NVCC ARCH SOURCE_DIR BINARY_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_resource_usage: ${var} is not set")
  endif()
endforeach()
execute_process(
  COMMAND "${NVCC}" -cubin -arch=sm_${ARCH} -std=c++17 -O3 --resource-usage -Xptxas=-v
          -I${SOURCE_DIR}/cuda -I${SOURCE_DIR}/cpp/src -I${SOURCE_DIR}/cpp/include
          -I${BINARY_DIR}/cpp/include
          -o ${BINARY_DIR}/softmax_resource_check.cubin ${SOURCE_DIR}/cuda/softmax.cu
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err)
set(report "${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "check_resource_usage: nvcc failed (${rc}):\n${report}")
endif()
string(REPLACE "\n" ";" lines "${report}")
set(checked 0)
set(bad "")
set(current "")
foreach(line IN LISTS lines)
  if(line MATCHES "Function properties for ([A-Za-z0-9_]+)")
    set(current "${CMAKE_MATCH_1}")
  elseif(NOT current STREQUAL "" AND
         line MATCHES "([0-9]+) bytes stack frame, ([0-9]+) bytes spill stores, ([0-9]+) bytes")
    set(stack "${CMAKE_MATCH_1}")
    set(stores "${CMAKE_MATCH_2}")
    set(loads "${CMAKE_MATCH_3}")
    if(current MATCHES "rows_warp_kernel")
      math(EXPR checked "${checked} + 1")
      if(NOT (stack EQUAL 0 AND stores EQUAL 0 AND loads EQUAL 0))
        string(APPEND bad "  ${current}: ${line}\n")
      endif()
    endif()
    set(current "")
  endif()
endforeach()
# 4 storage types x K in {1,2,4,8,16} (+ K = 32 for the three 4- and 2-byte types).
if(checked LESS 23)
  message(FATAL_ERROR "check_resource_usage: found ${checked} warp-row kernels in the report, "
                      "expected 23:\n${report}")
endif()
if(NOT bad STREQUAL "")
  message(FATAL_ERROR "check_resource_usage: warp-row kernels with local memory:\n${bad}")
endif()
message(STATUS "check_resource_usage: ${checked} warp-row kernels, no stack frame, no spills")
