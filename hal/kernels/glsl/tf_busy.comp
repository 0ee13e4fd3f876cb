// Keep the device busy for ns nanoseconds, spinning on the device's real-time clock (the
// SPIR-V twin of tf_busy in ../tf_kernels.ptx, which spins on %globaltimer). Needs
// VK_KHR_shader_clock's shaderDeviceClock, whose clock counts nanoseconds on lavapipe and
// NVIDIA. Arguments as in tf_vector_add_f32.comp.
//
// Each turn of the loop reads the clock 256 times: lavapipe (llvmpipe) ends any loop of an
// invocation after 65535 iterations, so a loop that read the clock once per turn would stop
// after about 2 ms there. Unrolled, one invocation can spin for about 0.6 s on lavapipe (and
// without limit on GPUs). The loop's result goes to workgroup memory: a loop with no visible
// effect may be removed by a driver's compiler (Mesa's is one).
#version 460
#extension GL_EXT_shader_realtime_clock : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_EXT_buffer_reference : require
layout(local_size_x_id = 0, local_size_y_id = 1, local_size_z_id = 2) in;
// Declared (never used) so that this module has the others' addressing model and they link.
layout(buffer_reference) buffer Unused { uint v; };
layout(push_constant, std430) uniform Args { uint64_t ns; } args;
shared uint last;
#define X4(x) x x x x
#define READ now = max(now, clockRealtimeEXT());
void main() {
    uint64_t start = clockRealtimeEXT();
    uint64_t now = start;
    while (now - start < args.ns) {
        X4(X4(X4(X4(READ))))
    }
    atomicMax(last, uint(now - start));
}
