// c[i] = a[i] + b[i] for i < n (the SPIR-V twin of tf_vector_add_f32 in ../tf_kernels.ptx).
// Kernel arguments arrive as push constants laid out like CUDA's parameter buffer (each at its
// natural alignment, in order); pointers are buffer device addresses. The block shape is
// specialization constants 0, 1, 2.
#version 460
#extension GL_EXT_buffer_reference : require
layout(local_size_x_id = 0, local_size_y_id = 1, local_size_z_id = 2) in;
layout(buffer_reference, std430, buffer_reference_align = 4) buffer F32s { float v[]; };
layout(push_constant, std430) uniform Args { F32s a; F32s b; F32s c; uint n; } args;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < args.n) {
        args.c.v[i] = args.a.v[i] + args.b.v[i];
    }
}
