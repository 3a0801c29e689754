# XENTKIT_SANITIZE=ON: the library and the C++ tests built with AddressSanitizer and
# UndefinedBehaviorSanitizer (gcc or clang), every report fatal. Included from the top level after
# the targets exist.
set(_xk_sanitize -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
target_compile_options(xentkit PRIVATE ${_xk_sanitize})
target_link_options(xentkit INTERFACE -fsanitize=address,undefined)
if(TARGET xentkit_cpp_tests)
  target_compile_options(xentkit_cpp_tests PRIVATE ${_xk_sanitize})
endif()
