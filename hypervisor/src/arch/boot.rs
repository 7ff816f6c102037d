//! The PVH entry: from 32-bit protected mode to long mode in the higher half.
//!
//! QEMU (and Xen) find the entry point through an ELF note of type 18
//! (`XEN_ELFNOTE_PHYS32_ENTRY`) and enter it in 32-bit protected mode, paging
//! off, with `ebx` holding the physical address of `hvm_start_info`. The code
//! here is linked at its physical address. It builds just enough page tables
//! (the first GiB identity-mapped, at the direct-map base, and at the kernel
//! base -2 GiB, all with 2 MiB pages), enables PAE, long mode, NX and paging,
//! and calls [`kernel_start`](crate::kernel_start) on the boot stack in the
//! higher half. Rust then replaces these tables with its own.

core::arch::global_asm!(
    r#"
    .section .note.tahoma.pvh, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4

    .section .boot.text, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi

    movl $boot_pdpt_low + 3, boot_pml4
    movl $boot_pdpt_low + 3, boot_pml4 + 256 * 8
    movl $boot_pdpt_high + 3, boot_pml4 + 511 * 8
    movl $boot_pd + 3, boot_pdpt_low
    movl $boot_pd + 3, boot_pdpt_high + 510 * 8

    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b

    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $boot_long

    .code64
boot_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl %esi, %edi
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movabsq $kernel_start, %rax
    callq *%rax
2:  hlt
    jmp 2b

    .section .boot.data, "aw"
    .balign 4096
boot_pml4:      .skip 4096
boot_pdpt_low:  .skip 4096
boot_pdpt_high: .skip 4096
boot_pd:        .skip 4096
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_ptr:
    .word 23
    .long boot_gdt

    .section .bss.boot_stack, "aw", @nobits
    .balign 16
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 0x10000
    .global boot_stack_top
boot_stack_top:
    "#,
    options(att_syntax)
);
