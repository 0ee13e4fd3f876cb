// p[i] = v for i < n (the SPIR-V twin of tf_fill_u32 in ../tf_kernels.ptx). Arguments as in
// tf_vector_add_f32.comp.
#version 460
#extension GL_EXT_buffer_reference : require
layout(local_size_x_id = 0, local_size_y_id = 1, local_size_z_id = 2) in;
layout(buffer_reference, std430, buffer_reference_align = 4) buffer U32s { uint v[]; };
layout(push_constant, std430) uniform Args { U32s p; uint v; uint n; } args;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < args.n) {
        args.p.v[i] = args.v;
    }
}
