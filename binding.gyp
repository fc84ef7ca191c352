{
  "targets": [
    {
      "target_name": "eqat",
      "sources": [
        "native/binding.cc",
        "native/threadpool.cc",
        "<!@(node -e \"console.log(require('fs').readdirSync('native/cpu').filter(f=>f.endsWith('.cc')).map(f=>'native/cpu/'+f).join(' '))\")",
        "<!@(node -e \"console.log(require('fs').readdirSync('native/cuda').filter(f=>f.endsWith('.cc')).map(f=>'native/cuda/'+f).join(' '))\")"
      ],
      "include_dirs": [
        "<!@(node -p \"require('node-addon-api').include\")",
        "native"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags": ["-O3", "-fno-math-errno", "-ffp-contract=off", "-pthread"],
      "cflags_cc": ["-O3", "-std=c++17", "-fexceptions", "-fno-math-errno", "-ffp-contract=off", "-pthread"],
      "ldflags": ["-pthread", "-ldl"]
    }
  ]
}
